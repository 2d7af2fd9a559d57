r"""The one-dimensional coordinates a factorised output distribution is made of.

Every output distribution in natgrad factorises over its output coordinates: independent
Bernoulli pixels with logits ``a``, or independent Gaussians ``N(m, e^{v})`` with mean ``m`` and
log-variance ``v`` (fixed, as in :class:`~natgrad.distributions.Gaussian`, or an output of the
network, as in :class:`~natgrad.distributions.GaussianLearnedVariance` and the VAE posterior
:class:`~natgrad.distributions.DiagonalGaussianPosterior`). The divergences of
:mod:`natgrad.geometry.divergences` are written elementwise on these coordinates; this module is
the single place that maps a distribution object to them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from natgrad.distributions import (
    Bernoulli,
    DiagonalGaussianPosterior,
    Gaussian,
    GaussianLearnedVariance,
)

SUPPORTED = ("Bernoulli", "Gaussian", "GaussianLearnedVariance", "DiagonalGaussianPosterior")


@dataclass(frozen=True)
class BernoulliCoordinates:
    """Independent Bernoulli coordinates with logits ``logits`` (any shape)."""

    logits: Tensor

    @property
    def log_probs(self) -> tuple[Tensor, Tensor]:
        """``(log P(y=1), log P(y=0))`` computed stably from the logits."""
        return torch.nn.functional.logsigmoid(self.logits), torch.nn.functional.logsigmoid(
            -self.logits
        )


@dataclass(frozen=True)
class GaussianCoordinates:
    """Independent Gaussians ``N(mean, exp(log_var))``.

    ``learned_variance`` says whether ``log_var`` is a parameter of the distribution (then the
    local metric has a log-variance block) or a fixed constant (only the mean block).
    """

    mean: Tensor
    log_var: Tensor
    learned_variance: bool

    @property
    def std(self) -> Tensor:
        """``sigma = exp(v / 2)``."""
        return torch.exp(0.5 * self.log_var)


Coordinates = BernoulliCoordinates | GaussianCoordinates


def coordinates_of(dist: object) -> Coordinates:
    """The elementwise coordinates of a natgrad output distribution.

    Raises:
        TypeError: if ``dist`` is not one of :data:`SUPPORTED`.
    """
    if isinstance(dist, Bernoulli):
        return BernoulliCoordinates(dist.logits)
    if isinstance(dist, Gaussian):
        log_var = torch.full_like(dist.mean, 2.0 * math.log(dist.sigma))
        return GaussianCoordinates(dist.mean, log_var, learned_variance=False)
    if isinstance(dist, GaussianLearnedVariance):
        return GaussianCoordinates(dist.mean, dist.log_var, learned_variance=True)
    if isinstance(dist, DiagonalGaussianPosterior):
        return GaussianCoordinates(dist.mu, dist.log_var, learned_variance=True)
    raise TypeError(f"Invalid distribution: {type(dist).__name__}; allowed: {', '.join(SUPPORTED)}")


def same_family(p: Coordinates, q: Coordinates) -> None:
    """Check that ``p`` and ``q`` are of one family and shape.

    Raises:
        ValueError: if the families, the variance treatment or the shapes differ.
    """
    if type(p) is not type(q):
        raise ValueError(
            f"divergence needs two distributions of one family, got {type(p).__name__} and "
            f"{type(q).__name__}"
        )
    if isinstance(p, GaussianCoordinates) and p.learned_variance != q.learned_variance:
        raise ValueError("divergence needs both Gaussians with fixed or both with learned variance")
    p_shape = p.logits.shape if isinstance(p, BernoulliCoordinates) else p.mean.shape
    q_shape = q.logits.shape if isinstance(q, BernoulliCoordinates) else q.mean.shape
    if p_shape != q_shape:
        raise ValueError(
            f"divergence needs equal shapes, got {tuple(p_shape)} and {tuple(q_shape)}"
        )


def fisher_diagonal(p: Coordinates) -> tuple[Tensor, ...]:
    r"""The Fisher of each coordinate in its own parameters, aligned with the distribution's params.

    Bernoulli logits: ``p(1-p)``. Gaussian mean: ``e^{-v}``; log-variance (when learned): ``1/2``
    (Martens 2014, section 9.2; PAPERS.md section 7).
    """
    if isinstance(p, BernoulliCoordinates):
        prob = torch.sigmoid(p.logits)
        return (prob * (1.0 - prob),)
    precision = torch.exp(-p.log_var)
    if p.learned_variance:
        return precision, torch.full_like(precision, 0.5)
    return (precision,)
