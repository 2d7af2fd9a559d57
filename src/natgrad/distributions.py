r"""Output distributions: what a network's outputs parameterise.

Notation (fixed for the whole package):

* ``z`` are the network outputs a distribution is built from (its *parameters*, a tuple of
  tensors of shape ``(N, d)``), ``y`` a target, ``L(y, z) = -log r(y | z)`` the negative
  log-likelihood summed over the ``d`` output dimensions of one example.
* ``H_L = \nabla^2_z L`` is the Hessian of the loss term in ``z`` and
  ``F_R = E_{y \sim r}[\nabla_z \log r \, \nabla_z \log r^T]`` the Fisher of the distribution in
  ``z``. For an exponential family in its natural parameters (Bernoulli logits, Gaussian mean with
  fixed variance) ``H_L = F_R`` (Martens 2014, "New insights", section 9.2), so the generalised
  Gauss-Newton matrix equals the Fisher.

Every distribution returns its output curvature from :meth:`OutputDistribution.curvature`, a tuple
aligned with :attr:`params`: the diagonal (shaped like the parameter) for the factorised ones, a
per-example ``(N, K, K)`` matrix for :class:`Categorical`, whose softmax couples the logits
(``H_L = diag(p) - p p^T``). The curvature code multiplies by it
(:func:`curvature_product`), takes its square root, and samples vectors with that
covariance (:attr:`OutputDistribution.sample_output_gradient`) for the Monte-Carlo Fisher; nothing
there branches on the distribution type.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence

import torch
from torch import Tensor
from torch.nn import functional as F

from natgrad.validation import require

_LOG_2PI = math.log(2.0 * math.pi)


def is_matrix_curvature(curvature: Tensor, vector: Tensor) -> bool:
    """True when ``curvature`` is the per-example ``(N, d, d)`` matrix of the ``(N, d)``
    ``vector``.
    """
    return curvature.dim() == vector.dim() + 1


def curvature_product(curvature: Tensor, vector: Tensor) -> Tensor:
    """``H v`` per example for one output: ``c * v`` (diagonal) or ``H_n v_n`` (``(N, d, d)``
    matrix).

    ``vector`` is shaped like the output (or, for a square root ``R`` of shape ``(N, d, r)``, like
    its ``(N, r)`` columns' coefficients).
    """
    if is_matrix_curvature(curvature, vector):
        return (curvature @ vector.unsqueeze(-1)).squeeze(-1)
    return curvature * vector


def sample_with_square_root(
    roots: Sequence[Tensor], outputs: Sequence[Tensor], generator: torch.Generator | None = None
) -> tuple[Tensor, ...]:
    """``s = R eps`` per output, ``eps ~ N(0, I)`` shaped like the output, so ``E[s s^T] = R R^T``.

    The one default Monte-Carlo sampler of the output curvature (Martens & Grosse 2015, section 5):
    ``R`` is a square root of ``H``, diagonal (shaped like the output) or per-example ``(N, d, d)``.
    """
    return tuple(
        curvature_product(
            root, torch.randn(z.shape, generator=generator, dtype=root.dtype, device=root.device)
        )
        for root, z in zip(roots, outputs)
    )


class OutputDistribution(ABC):
    """A factorised distribution over targets, parameterised by network outputs ``params``."""

    params: tuple[Tensor, ...]

    @abstractmethod
    def nll(self, target: Tensor) -> Tensor:
        """Negative log-likelihood ``-log r(y|z)`` per example, summed over dimensions: shape
        (N,).
        """

    @property
    @abstractmethod
    def mean(self) -> Tensor:
        """E[y]: the reconstruction the papers' error is computed on."""

    @abstractmethod
    def curvature_diagonal(self, target: Tensor | None = None) -> tuple[Tensor, ...]:
        """Diagonal of the output-space curvature used by the Gauss-Newton matrix.

        For natural parameters this is ``H_L = F_R`` (independent of the target). Where the NLL is
        not convex in ``z`` (learned variance) it is the Fisher ``F_R``, the expected Hessian.
        """

    def curvature(self, target: Tensor | None = None) -> tuple[Tensor, ...]:
        """The output curvature per parameter: its diagonal here (a factorised distribution)."""
        return self.curvature_diagonal(target)

    def as_target(self, target: Tensor) -> Tensor:
        """``target`` shaped as :meth:`nll` expects: like the first parameter (one value per
        output).
        """
        return target.reshape(self.params[0].shape)

    @abstractmethod
    def with_params(self, params: tuple[Tensor, ...]) -> "OutputDistribution":
        """The same family (and fixed settings, e.g. a Gaussian's ``sigma``) on other parameter
        tensors.

        Aligned with :attr:`params`; e.g. the ``(N, k, D)`` outputs of ``k`` samples per example
        flattened to ``(N k, D)``, so that :meth:`nll` gives one value per sample.
        """

    def sample_output_gradient(
        self, generator: torch.Generator | None = None
    ) -> tuple[Tensor, ...]:
        """A random ``s`` per output with ``E[s s^T] = diag(curvature_diagonal())``.

        Back-propagating ``s`` through the network gives a gradient sample whose outer product is,
        in expectation, the GGN (Martens & Grosse 2015, section 5). The default draws
        ``sqrt(c) * eps`` with ``eps ~ N(0, I)`` (:func:`sample_with_square_root`, the one
        Monte-Carlo sampler, shared with :class:`natgrad.losses.LossTerm`); Bernoulli and
        Categorical return the gradient of the NLL at a sampled target instead, the papers'
        estimator.
        """
        return sample_with_square_root(
            tuple(c.sqrt() for c in self.curvature_diagonal()), self.params, generator
        )


class Bernoulli(OutputDistribution):
    r"""Independent Bernoulli pixels with logits ``z``: ``L = softplus(z) - y z``, ``H_L =
    p(1-p)``.
    """

    def __init__(self, logits: Tensor) -> None:
        self.logits = logits
        self.params = (logits,)

    def nll(self, target: Tensor) -> Tensor:
        """``softplus(z) - y z`` per example, summed over the pixels."""
        return (
            F.binary_cross_entropy_with_logits(self.logits, target, reduction="none")
            .flatten(1)
            .sum(1)
        )

    def with_params(self, params: tuple[Tensor, ...]) -> "Bernoulli":
        """A Bernoulli on other logits."""
        return Bernoulli(*params)

    @property
    def mean(self) -> Tensor:
        """``sigmoid(z)``."""
        return torch.sigmoid(self.logits)

    def curvature_diagonal(self, target: Tensor | None = None) -> tuple[Tensor, ...]:
        """``p (1 - p)``, the Hessian of the NLL in the logits (any target)."""
        p = torch.sigmoid(self.logits.detach())
        return (p * (1.0 - p),)

    def sample_output_gradient(
        self, generator: torch.Generator | None = None
    ) -> tuple[Tensor, ...]:
        """``dL/dz = p - y`` at ``y ~ Bernoulli(p)``: covariance ``p (1 - p)`` (the papers')."""
        p = torch.sigmoid(self.logits.detach())
        return (p - torch.bernoulli(p, generator=generator),)


class Gaussian(OutputDistribution):
    r"""Gaussian with mean ``z`` and fixed standard deviation ``sigma``.

    ``L = |y - z|^2 / (2 sigma^2) + d/2 log(2 pi sigma^2)``, ``H_L = I / sigma^2``. With
    ``sigma = 1`` this is the papers' squared-error loss for FACES up to the factor 1/2.
    """

    def __init__(self, mean: Tensor, sigma: float = 1.0) -> None:
        require(sigma > 0, "Gaussian sigma", sigma, "a number > 0")
        self._mean = mean
        self.sigma = float(sigma)
        self.params = (mean,)

    def nll(self, target: Tensor) -> Tensor:
        """``|y - z|^2 / (2 sigma^2) + d/2 log(2 pi sigma^2)`` per example."""
        sq = ((target - self._mean) ** 2).flatten(1).sum(1)
        d = self._mean[0].numel()
        return 0.5 * sq / self.sigma**2 + 0.5 * d * (_LOG_2PI + 2.0 * math.log(self.sigma))

    def with_params(self, params: tuple[Tensor, ...]) -> "Gaussian":
        """A Gaussian with the same ``sigma`` on other means."""
        return Gaussian(*params, sigma=self.sigma)

    @property
    def mean(self) -> Tensor:
        """The mean ``z``."""
        return self._mean

    def curvature_diagonal(self, target: Tensor | None = None) -> tuple[Tensor, ...]:
        """``1 / sigma^2`` everywhere."""
        return (torch.full_like(self._mean.detach(), 1.0 / self.sigma**2),)


class GaussianLearnedVariance(OutputDistribution):
    r"""Gaussian with mean ``m`` and log-variance ``v`` both output by the network.

    ``L = 1/2 [ (y - m)^2 e^{-v} + v + log 2 pi ]`` per dimension. ``(m, v)`` are not natural
    parameters and ``L`` is not convex in them, so the curvature is the Fisher
    ``F_R = diag(e^{-v}, 1/2)`` (Martens 2014, section 9.2: GGN and Fisher differ here).
    """

    def __init__(self, mean: Tensor, log_var: Tensor) -> None:
        self._mean = mean
        self.log_var = log_var
        self.params = (mean, log_var)

    def nll(self, target: Tensor) -> Tensor:
        """``1/2 [(y - m)^2 e^{-v} + v + log 2 pi]`` per example, summed over dimensions."""
        per_dim = 0.5 * (
            (target - self._mean) ** 2 * torch.exp(-self.log_var) + self.log_var + _LOG_2PI
        )
        return per_dim.flatten(1).sum(1)

    def with_params(self, params: tuple[Tensor, ...]) -> "GaussianLearnedVariance":
        """A learned-variance Gaussian on other ``(m, v)``."""
        return GaussianLearnedVariance(*params)

    @property
    def mean(self) -> Tensor:
        """The mean ``m``."""
        return self._mean

    def curvature_diagonal(self, target: Tensor | None = None) -> tuple[Tensor, ...]:
        """The Fisher ``diag(e^{-v}, 1/2)`` (the NLL is not convex in ``(m, v)``)."""
        v = self.log_var.detach()
        return (torch.exp(-v), torch.full_like(v, 0.5))


class Categorical(OutputDistribution):
    r"""One of ``K`` classes with logits ``z`` (softmax cross-entropy): ``L = logsumexp(z) - z_y``.

    ``p = softmax(z)``; the Hessian ``H_L = diag(p) - p p^T`` does not depend on ``y`` and equals
    the Fisher (logits are the natural parameters; Martens 2014, section 9.2). It is not diagonal:
    :meth:`curvature` returns the per-example ``(N, K, K)`` matrix (the exact estimator
    back-propagates the columns of its square root, :meth:`natgrad.losses.LossTerm.curvature_sqrt`).
    Targets are class indices, shape ``(N,)``.
    """

    def __init__(self, logits: Tensor) -> None:
        if logits.dim() != 2:
            raise ValueError(
                f"Categorical logits must have shape (N, classes), got {tuple(logits.shape)}"
            )
        self.logits = logits
        self.params = (logits,)

    def nll(self, target: Tensor) -> Tensor:
        """``logsumexp(z) - z_y`` per example."""
        return F.cross_entropy(self.logits, target, reduction="none")

    def as_target(self, target: Tensor) -> Tensor:
        """Class indices, shape ``(N,)``."""
        return target.reshape(self.logits.shape[0])

    def with_params(self, params: tuple[Tensor, ...]) -> "Categorical":
        """A Categorical on other logits."""
        return Categorical(*params)

    @property
    def mean(self) -> Tensor:
        """``softmax(z)``."""
        return torch.softmax(self.logits, dim=1)

    def curvature_diagonal(self, target: Tensor | None = None) -> tuple[Tensor, ...]:
        """``p (1 - p)``: only the diagonal of :meth:`curvature` (what a diagonal estimate
        keeps).
        """
        p = torch.softmax(self.logits.detach(), dim=1)
        return (p * (1.0 - p),)

    def curvature(self, target: Tensor | None = None) -> tuple[Tensor, ...]:
        """``diag(p) - p p^T`` per example: ``(N, K, K)``."""
        p = torch.softmax(self.logits.detach(), dim=1)
        return (torch.diag_embed(p) - p.unsqueeze(2) * p.unsqueeze(1),)

    def sample_output_gradient(
        self, generator: torch.Generator | None = None
    ) -> tuple[Tensor, ...]:
        """``dL/dz = p - onehot(y)`` at ``y ~ p``: covariance ``diag(p) - p p^T`` (the papers')."""
        p = torch.softmax(self.logits.detach(), dim=1)
        y = torch.multinomial(p, 1, generator=generator).squeeze(1)
        return (p - F.one_hot(y, p.shape[1]).to(p.dtype),)


class DiagonalGaussianPosterior:
    r"""The VAE encoder's ``q(z|x) = N(mu, diag(exp(v)))`` with ``v = log sigma^2``.

    ``KL(q || N(0, I)) = 1/2 sum_j (mu_j^2 + e^{v_j} - v_j - 1)`` (Kingma & Welling 2014, App. B).
    As a function of ``(mu, v)`` it is convex and separable, with Hessian ``diag(1, e^v / 2)``:
    this is the second loss term of the VAE's Gauss-Newton matrix.
    """

    def __init__(self, mu: Tensor, log_var: Tensor) -> None:
        self.mu = mu
        self.log_var = log_var
        self.params = (mu, log_var)

    @property
    def std(self) -> Tensor:
        """``sigma = exp(v / 2)``."""
        return torch.exp(0.5 * self.log_var)

    def rsample(self, eps: Tensor) -> Tensor:
        """Reparameterised sample ``z = mu + sigma * eps`` (Kingma & Welling 2014, section 2.4)."""
        return self.mu + self.std * eps

    def with_sample_axis(self) -> "DiagonalGaussianPosterior":
        """The posterior with ``mu, v`` of shape ``(N, 1, d)``: broadcasts over ``k`` samples ``(N,
        k, d)``.

        Its :meth:`rsample` maps noise ``(N, k, d)`` to ``k`` samples per example and its
        :meth:`log_prob` scores them, ``(N, k)``.
        """
        return DiagonalGaussianPosterior(self.mu.unsqueeze(-2), self.log_var.unsqueeze(-2))

    def detached(self) -> "DiagonalGaussianPosterior":
        """The same distribution with ``mu, v`` cut from the graph (gradients reach a sample only
        through ``z``).
        """
        return DiagonalGaussianPosterior(self.mu.detach(), self.log_var.detach())

    def log_prob(self, z: Tensor) -> Tensor:
        """``log q(z|x)`` per example, shape (N,) (or (..., N) for stacked samples)."""
        per_dim = -0.5 * ((z - self.mu) ** 2 * torch.exp(-self.log_var) + self.log_var + _LOG_2PI)
        return per_dim.sum(-1)

    def kl_to_standard_normal(self) -> Tensor:
        """Closed-form ``KL(q || N(0, I))`` per example, shape (N,)."""
        return 0.5 * (self.mu**2 + torch.exp(self.log_var) - self.log_var - 1.0).sum(-1)

    def kl_hessian_diagonal(self) -> tuple[Tensor, Tensor]:
        """``diag(1, e^v/2)``: the Hessian of the KL in ``(mu, v)``, aligned with :attr:`params`."""
        v = self.log_var.detach()
        return torch.ones_like(v), 0.5 * torch.exp(v)


def standard_normal_log_prob(z: Tensor) -> Tensor:
    """``log N(z; 0, I)`` summed over the last dimension."""
    return -0.5 * (z**2 + _LOG_2PI).sum(-1)
