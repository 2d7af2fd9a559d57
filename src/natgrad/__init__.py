"""natgrad: natural-gradient training of VAEs and deep autoencoders."""
from natgrad.distributions import (
    Bernoulli,
    DiagonalGaussianPosterior,
    Gaussian,
    GaussianLearnedVariance,
    OutputDistribution,
)
from natgrad.models import VAE, DeepAutoencoder

__version__ = "0.1.0"
__all__ = [
    "Bernoulli",
    "DeepAutoencoder",
    "DiagonalGaussianPosterior",
    "Gaussian",
    "GaussianLearnedVariance",
    "OutputDistribution",
    "VAE",
]
