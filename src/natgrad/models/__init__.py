"""Models: plain nn.Modules that return their output distributions."""

from natgrad.models.autoencoder import (
    ARCHITECTURES,
    LIKELIHOODS,
    AutoencoderOutput,
    DeepAutoencoder,
)
from natgrad.models.init import sparse_init_
from natgrad.models.vae import VAE, VAEOutput

__all__ = [
    "ARCHITECTURES",
    "LIKELIHOODS",
    "AutoencoderOutput",
    "DeepAutoencoder",
    "VAE",
    "VAEOutput",
    "sparse_init_",
]
