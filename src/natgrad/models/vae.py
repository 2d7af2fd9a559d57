"""Variational autoencoder (Kingma & Welling 2014) on the deep-autoencoder shapes, or any MLP."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from natgrad.distributions import DiagonalGaussianPosterior, OutputDistribution
from natgrad.models.autoencoder import (
    check_likelihood,
    decoder_sizes,
    likelihood_from_outputs,
    problem_arguments,
)
from natgrad.models.init import initialise_
from natgrad.models.mlp import mlp


@dataclass
class VAEOutput:
    """The VAE's two distributional outputs and the latent sample that links them."""

    likelihood: OutputDistribution  # p(x | z), on the decoder output
    posterior: DiagonalGaussianPosterior  # q(z | x), on the encoder output (mu, log sigma^2)
    z: Tensor  # (N, latent), or (N, k, latent) for k samples per example
    eps: Tensor


class VAE(nn.Module):
    """Encoder ``sizes[:-1]`` -> linear head ``2 * latent`` = (mu, log sigma^2) -> z -> decoder.

    ``sizes`` are as for :class:`~natgrad.models.DeepAutoencoder`, the last entry being the latent
    dimension; the decoder mirrors the encoder and ends in the dataset's likelihood. All Linear
    layers are one chain in forward order (encoder, head, decoder).

    Hidden units are ``tanh`` by default, as in Kingma & Welling's (2014, appendix C) MLP encoder
    and decoder, with PyTorch's default initialisation. The autoencoder papers' logistic units
    (``activation="sigmoid"``) hold every optimizer longer on the posterior-collapse plateau and
    K-FAC on it for good (docs/vae-training.md).
    """

    def __init__(
        self,
        sizes: Sequence[int],
        likelihood: str = "bernoulli",
        activation: str = "tanh",
        init: str = "default",
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.sizes = tuple(int(s) for s in sizes)
        if len(self.sizes) < 2:
            raise ValueError(f"VAE sizes need an input and a latent size, got {list(sizes)}")
        self.latent_dim = self.sizes[-1]
        self.likelihood_name = check_likelihood(likelihood)
        hidden = self.sizes[:-1]
        trunk = (
            mlp(hidden, activation, final_activation=True) if len(hidden) > 1 else nn.Sequential()
        )
        self.encoder = nn.Sequential(*trunk, nn.Linear(hidden[-1], 2 * self.latent_dim))
        self.decoder = mlp(
            decoder_sizes(self.sizes, likelihood), activation, final_activation=False
        )
        initialise_(self, init, generator)

    @classmethod
    def for_problem(cls, problem: str, **kwargs) -> "VAE":
        """The deep-autoencoder shapes of 'mnist', 'curves' or 'faces' as a VAE."""
        sizes, arguments = problem_arguments(problem, kwargs)
        return cls(sizes, **arguments)

    def encode(self, x: Tensor) -> DiagonalGaussianPosterior:
        """``q(z|x)``."""
        mu, log_var = self.encoder(x.flatten(1)).chunk(2, dim=-1)
        return DiagonalGaussianPosterior(mu, log_var)

    def decode(self, z: Tensor) -> OutputDistribution:
        """``p(x|z)``."""
        return likelihood_from_outputs(self.likelihood_name, self.decoder(z))

    def forward(self, x: Tensor, eps: Tensor | None = None) -> VAEOutput:
        """One reparameterised pass; pass ``eps`` to fix the noise (exact oracles need it).

        ``eps`` of shape ``(N, latent)`` draws one sample per example (the ELBO); ``(N, k, latent)``
        draws ``k`` (the importance-weighted bound, :mod:`natgrad.iwae`): ``z`` and the decoder's
        outputs are then ``(N, k, ...)``, and every decoder layer sees the ``k`` samples as ``k``
        locations of one example (the KFC statistics of :mod:`natgrad.curvature.capture`).
        """
        posterior = self.encode(x)
        if eps is None:
            eps = torch.randn_like(posterior.mu)
        sampled = posterior.with_sample_axis() if eps.dim() == posterior.mu.dim() + 1 else posterior
        z = sampled.rsample(eps)
        return VAEOutput(self.decode(z), posterior, z, eps)
