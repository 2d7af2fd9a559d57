r"""Losses that carry their curvature: a loss is a sum of convex terms of network outputs.

Notation (as in :mod:`natgrad.distributions`): a *term* ``t`` is a function ``L_t(z_t)`` of one
network output ``z_t = f_t(x, \theta)`` (a tuple of tensors of shape ``(N, d)``) with a known,
diagonal output-space curvature ``H_t = \nabla^2_{z_t} L_t`` (the Fisher ``F_R`` where ``L_t`` is not
convex, e.g. a learned-variance Gaussian). The objective is

.. math::  h(\theta) = \frac{1}{N} \sum_n \sum_t L_t(z_{t,n}),

and its generalised Gauss-Newton matrix is ``G = (1/N) sum_n sum_t J_{t,n}^T H_{t,n} J_{t,n}``
(Schraudolph 2002; Martens 2014, section 8). A plain autoencoder has one term (the likelihood NLL
on the decoder output); a VAE has two (the likelihood on the decoder output and
``KL(q(z|x) || N(0, I))`` on the encoder output ``(mu, log sigma^2)``, Hessian ``diag(1, sigma^2/2)``;
Kingma & Welling 2014, App. B).

A :class:`Loss` is re-evaluable as a pure function of a parameter dict
(``torch.func.functional_call`` with the same inputs, including the VAE's noise ``eps``), which is
what the exact oracles in :mod:`natgrad.curvature.exact` differentiate.

Using your own model: write a ``TermBuilder`` that turns the model's output (and its inputs) into
:class:`LossTerm` objects, then call :meth:`Loss.from_model`::

    def my_terms(out, inputs):
        x, = inputs
        return (likelihood_term(out.likelihood, x), LossTerm("sparsity", (out.code,), ...))

    loss = Loss.from_model(model, (x,), my_terms)

Any term whose output curvature is diagonal fits: give the per-example value and the diagonal.
Model-type dispatch (autoencoder vs. VAE) lives only in :func:`build_loss`; the curvature code
sees terms, never models.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

from natgrad.distributions import DiagonalGaussianPosterior, OutputDistribution
from natgrad.models import VAE, AutoencoderOutput, VAEOutput

OutputGradientSampler = Callable[[torch.Generator | None], tuple[Tensor, ...]]


@dataclass(frozen=True)
class LossTerm:
    r"""One convex term ``L(z)`` of the objective, evaluated at network outputs ``outputs``.

    Attributes:
        name: label used in logs (e.g. ``"likelihood"``, ``"kl"``).
        outputs: the network outputs ``z`` the term is a function of, each ``(N, d_k)``, attached
            to the autograd graph of the parameters.
        values: per-example value ``L(z_n)``, shape ``(N,)``.
        curvature: diagonal of the per-example output Hessian ``H = \nabla^2_z L`` (or the Fisher
            where ``L`` is not convex), aligned with ``outputs``, detached.
        is_likelihood: True for a data likelihood NLL; the VAE's "decoder-only" curvature keeps
            only these terms.
        output_gradient_sampler: draws ``s`` with ``E[s s^T] = diag(curvature)``; defaults to
            ``sqrt(curvature) * N(0, I)``.
    """

    name: str
    outputs: tuple[Tensor, ...]
    values: Tensor
    curvature: tuple[Tensor, ...]
    is_likelihood: bool = False
    output_gradient_sampler: OutputGradientSampler | None = None

    def __post_init__(self) -> None:
        if len(self.outputs) != len(self.curvature):
            raise ValueError(
                f"LossTerm {self.name!r}: outputs has {len(self.outputs)} tensors but curvature has "
                f"{len(self.curvature)}; they must be aligned"
            )
        for z, c in zip(self.outputs, self.curvature):
            if z.shape != c.shape:
                raise ValueError(f"LossTerm {self.name!r}: output shape {tuple(z.shape)} != curvature shape {tuple(c.shape)}")

    def hessian_vp(self, vectors: Sequence[Tensor]) -> tuple[Tensor, ...]:
        """``H v`` per example in output space (``H`` diagonal), aligned with :attr:`outputs`."""
        return tuple(c * v for c, v in zip(self.curvature, vectors))

    def curvature_sqrt(self) -> tuple[Tensor, ...]:
        """The diagonal square root ``B`` with ``B B^T = H`` (exact-Fisher square roots, K-FAC §5)."""
        return tuple(c.sqrt() for c in self.curvature)

    def sample_output_gradient(self, generator: torch.Generator | None = None) -> tuple[Tensor, ...]:
        """A random ``s`` with ``E[s s^T] = H`` per example (Monte-Carlo Fisher, K-FAC §5)."""
        if self.output_gradient_sampler is not None:
            return self.output_gradient_sampler(generator)
        return tuple(
            c.sqrt() * torch.randn(c.shape, generator=generator, dtype=c.dtype, device=c.device)
            for c in self.curvature
        )


def likelihood_term(likelihood: OutputDistribution, target: Tensor) -> LossTerm:
    """The NLL ``-log r(x | z)`` of ``target`` under an output distribution, as a loss term."""
    target = target.reshape(likelihood.params[0].shape)
    return LossTerm(
        name="likelihood",
        outputs=tuple(likelihood.params),
        values=likelihood.nll(target),
        curvature=likelihood.curvature_diagonal(target),
        is_likelihood=True,
        output_gradient_sampler=likelihood.sample_output_gradient,
    )


def kl_term(posterior: DiagonalGaussianPosterior) -> LossTerm:
    """``KL(N(mu, sigma^2) || N(0, I))`` as a function of ``(mu, log sigma^2)``; Hessian ``diag(1, sigma^2/2)``."""
    return LossTerm(
        name="kl",
        outputs=tuple(posterior.params),
        values=posterior.kl_to_standard_normal(),
        curvature=posterior.kl_hessian_diagonal(),
    )


#: Turns a model's output and the positional inputs it was called with into loss terms.
TermBuilder = Callable[[Any, tuple[Tensor, ...]], tuple[LossTerm, ...]]


@dataclass(frozen=True)
class Loss:
    """A sum of :class:`LossTerm` over a batch, re-evaluable at any parameters.

    Attributes:
        model: the module; its named parameters are the coordinates of every curvature matrix.
        inputs: positional, batch-first arguments of ``model`` (``(x,)`` or ``(x, eps)``).
        build_terms: the :data:`TermBuilder` that makes the terms from ``model(*inputs)``.
        terms: the terms at the model's current parameters.
    """

    model: nn.Module
    inputs: tuple[Tensor, ...]
    build_terms: TermBuilder
    terms: tuple[LossTerm, ...]

    @classmethod
    def from_model(cls, model: nn.Module, inputs: Sequence[Tensor], build_terms: TermBuilder) -> "Loss":
        """Run ``model(*inputs)`` and build its terms; the entry point for user-defined models."""
        inputs = tuple(inputs)
        terms = tuple(build_terms(model(*inputs), inputs))
        if not terms:
            raise ValueError("build_terms returned no loss terms; a Loss needs at least one")
        return cls(model, inputs, build_terms, terms)

    @property
    def batch_size(self) -> int:
        return int(self.terms[0].values.shape[0])

    @property
    def per_example(self) -> Tensor:
        """Sum of the terms per example, shape ``(N,)`` (negative ELBO in nats for the VAE)."""
        return sum(t.values for t in self.terms)

    @property
    def value(self) -> Tensor:
        """The scalar objective ``h = (1/N) sum_n sum_t L_t(z_{t,n})``."""
        return self.per_example.mean()

    def parameters(self) -> dict[str, Tensor]:
        """The model's trainable parameters by name (the order every curvature matrix uses)."""
        return {name: p for name, p in self.model.named_parameters() if p.requires_grad}

    def evaluate(self, params: Mapping[str, Tensor], inputs: Sequence[Tensor] | None = None) -> tuple[LossTerm, ...]:
        """The terms at ``params`` (a pure function of them), optionally on other ``inputs``."""
        inputs = self.inputs if inputs is None else tuple(inputs)
        return tuple(self.build_terms(functional_call(self.model, dict(params), inputs), inputs))

    def value_at(self, params: Mapping[str, Tensor], inputs: Sequence[Tensor] | None = None) -> Tensor:
        """``h(params)`` on the same batch and noise."""
        return sum(t.values for t in self.evaluate(params, inputs)).mean()

    def rebuild(self) -> "Loss":
        """The same loss (same inputs and noise) re-evaluated at the model's current parameters."""
        return Loss.from_model(self.model, self.inputs, self.build_terms)


def autoencoder_terms(out: AutoencoderOutput, inputs: tuple[Tensor, ...]) -> tuple[LossTerm, ...]:
    """One term: the likelihood NLL of the input on the decoder output."""
    return (likelihood_term(out.likelihood, inputs[0]),)


def vae_terms(out: VAEOutput, inputs: tuple[Tensor, ...]) -> tuple[LossTerm, ...]:
    """Two terms: likelihood NLL on the decoder output, KL on the encoder output ``(mu, log sigma^2)``."""
    return (likelihood_term(out.likelihood, inputs[0]), kl_term(out.posterior))


def _terms_for_output(out: Any, inputs: tuple[Tensor, ...]) -> tuple[LossTerm, ...]:
    if isinstance(out, VAEOutput):
        return vae_terms(out, inputs)
    if isinstance(out, AutoencoderOutput):
        return autoencoder_terms(out, inputs)
    raise TypeError(
        f"build_loss supports models returning AutoencoderOutput or VAEOutput, got {type(out).__name__}; "
        "for other models use Loss.from_model(model, inputs, build_terms)"
    )


def build_loss(
    model: nn.Module,
    x: Tensor,
    *,
    eps: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Loss:
    """The training objective of a DeepAutoencoder (NLL) or VAE (negative ELBO, one sample).

    For a VAE the reparameterisation noise ``eps ~ N(0, I)`` of shape ``(N, latent_dim)`` is drawn
    from ``generator`` unless given, and stored in :attr:`Loss.inputs`, so re-evaluating the loss
    (at other parameters) uses the same noise.

    Raises:
        ValueError: ``eps`` is given for a model that takes no noise, or has the wrong shape.
        TypeError: the model returns neither AutoencoderOutput nor VAEOutput.
    """
    if isinstance(model, VAE):
        shape = (x.shape[0], model.latent_dim)
        if eps is None:
            eps = torch.randn(shape, generator=generator, dtype=x.dtype, device=x.device)
        elif tuple(eps.shape) != shape:
            raise ValueError(f"eps must have shape {shape} (batch, latent_dim), got {tuple(eps.shape)}")
        inputs: tuple[Tensor, ...] = (x, eps)
    elif eps is not None:
        raise ValueError(f"eps is only used by a VAE, got eps for {type(model).__name__}")
    else:
        inputs = (x,)
    return Loss.from_model(model, inputs, _terms_for_output)
