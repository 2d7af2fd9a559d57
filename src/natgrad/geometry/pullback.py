r"""Output-space metrics pulled back to the parameters: ``G_M = (1/N) sum_n J_n^T M_n J_n``.

Notation: ``theta`` is the flat parameter vector, ``z_n(theta)`` the parameters of example ``n``'s
output distributions (decoder logits, and for a VAE also the posterior ``(mu, log sigma^2)``),
``J_n = dz_n/dtheta`` and ``M_n`` the output-space metric of a divergence (diagonal, or one matrix
per example for a softmax output)
(:meth:`~natgrad.geometry.divergences.Divergence.output_metric`). Then for the batch-mean divergence

.. math::  \bar D(\theta, \theta + \delta)
           = \frac1N \sum_n D(p_{z_n(\theta)} \| p_{z_n(\theta+\delta)})
           = \tfrac12 \delta^T G_M \delta + O(|\delta|^3),

because the first derivative of ``D`` vanishes at ``delta = 0`` (so no second-derivative-of-``z``
term survives; the same argument that makes the Fisher a Gauss-Newton matrix, Martens 2014
section 9). With ``M`` the KL metric, ``G_M`` is the Fisher/GGN of the curvature core.

Products use the curvature core's :class:`~natgrad.curvature.exact.OutputJacobian` (the same
jvp -> output metric -> vjp machinery as the GGN-vector product): ``J v`` by forward mode, ``J^T u``
by one reverse pass built once at construction. The dense matrix (tiny models, tests) is built from
the full Jacobian with ``jacrev``, an independent code path.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn
from torch.func import functional_call, jacrev

from natgrad.curvature.exact import OutputJacobian, dense_pullback
from natgrad.distributions import curvature_product
from natgrad.geometry.divergences import Divergence
from natgrad.models import VAEOutput

#: ``theta (flat) -> the output distributions on a fixed batch``.
OutputsFn = Callable[[Tensor], Sequence[object]]


def flat_parameters(model: nn.Module) -> Tensor:
    """All parameters of ``model`` concatenated in ``named_parameters`` order (detached copy)."""
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def unflatten(model: nn.Module, theta: Tensor) -> dict[str, Tensor]:
    """Split a flat vector into a ``{name: tensor}`` dict shaped like ``model``'s parameters."""
    out, start = {}, 0
    for name, p in model.named_parameters():
        out[name] = theta[start : start + p.numel()].view_as(p)
        start += p.numel()
    if start != theta.numel():
        raise ValueError(f"theta has {theta.numel()} entries, the model has {start} parameters")
    return out


def model_outputs(model: nn.Module, x: Tensor, eps: Tensor | None = None) -> OutputsFn:
    """``theta -> [output distributions]`` of a natgrad model on the batch ``x``.

    A :class:`~natgrad.models.VAE` gives ``[p(x|z), q(z|x)]`` with its noise fixed to ``eps``
    (required: a divergence between two parameter values must compare the same ``z`` draw); a
    :class:`~natgrad.models.DeepAutoencoder` gives ``[p(x|code)]``.

    Raises:
        ValueError: a VAE without ``eps``.
    """

    def outputs(theta: Tensor) -> list[object]:
        kwargs = {} if eps is None else {"eps": eps}
        out = functional_call(model, unflatten(model, theta), (x,), kwargs)
        if isinstance(out, VAEOutput):
            if eps is None:
                raise ValueError(
                    "model_outputs: a VAE needs a fixed eps (the noise of its latent sample)"
                )
            return [out.likelihood, out.posterior]
        return [out.likelihood]

    return outputs


def output_tensors(distributions: Sequence[object]) -> tuple[Tensor, ...]:
    """The parameter tensors of all ``distributions``, in order (what ``J`` differentiates)."""
    return tuple(t for d in distributions for t in d.params)


def mean_divergence(
    outputs: OutputsFn, theta: Tensor, delta: Tensor, divergence: Divergence
) -> Tensor:
    """``(1/N) sum_n sum_heads D(p_n(theta) || p_n(theta + delta))``, a 0-d tensor."""
    reference, perturbed = outputs(theta), outputs(theta + delta)
    total = sum(divergence.between(p, q) for p, q in zip(reference, perturbed))
    return total.mean()


class PulledBackMetric:
    """``G_M = (1/N) sum_n J_n^T M_n J_n`` for one divergence at one ``theta`` on one batch.

    Raises (at construction):
        NoLocalMetricError: if the divergence has no local metric for these outputs.
    """

    def __init__(self, outputs: OutputsFn, theta: Tensor, divergence: Divergence) -> None:
        self.theta = theta.detach()
        self.divergence = divergence
        self._fn = lambda t: output_tensors(outputs(t))
        distributions = outputs(self.theta)
        self.metric = tuple(m.detach() for d in distributions for m in divergence.output_metric(d))
        self.batch_size = int(self.metric[0].shape[0])
        self._jacobian = OutputJacobian(self._fn, self.theta)

    @property
    def dim(self) -> int:
        """``P``, the number of parameters."""
        return self.theta.numel()

    def matvec(self, v: Tensor) -> Tensor:
        """``G_M v``: one forward-mode and one reverse-mode pass."""
        return self._jacobian.pullback_product(self.metric, v) / self.batch_size

    def quadratic_form(self, v: Tensor) -> Tensor:
        """``v^T G_M v = (1/N) sum_n (J_n v)^T M_n (J_n v)`` from one forward-mode pass."""
        jv = self._jacobian.jvp(v)
        return (
            sum((j * curvature_product(m, j)).sum() for m, j in zip(self.metric, jv))
            / self.batch_size
        )

    def to_dense(self) -> Tensor:
        """The ``(P, P)`` matrix from the full Jacobian (``jacrev``); for tiny models only."""
        jacobians = jacrev(self._fn)(self.theta)  # each (*output shape, P)
        return (
            dense_pullback([jac.movedim(-1, 0) for jac in jacobians], self.metric) / self.batch_size
        )
