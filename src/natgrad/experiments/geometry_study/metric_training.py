r"""Training with the steepest-descent direction of a divergence's local metric.

One step on a mini-batch, for a metric ``G_M``
(:class:`~natgrad.geometry.pullback.PulledBackMetric`; ``None`` means the Euclidean metric ``I``,
i.e. the plain gradient direction):

1. ``Delta = -(G_M + lambda_M I)^{-1} g`` by CG
   (:func:`~natgrad.experiments.geometry_study.directions.steepest_descent_direction`), ``lambda_M =
   relative_damping * tr(G_M)/P`` (so every positive multiple of a metric -- every f-divergence --
   gives the same ``Delta``).
2. The step size from the *same* quadratic model for every metric, the loss's exact Gauss-Newton
   matrix ``G`` (:func:`natgrad.curvature.exact.ggn_vector_product`) with Levenberg-Marquardt
   damping ``lambda``: ``alpha* = -g^T Delta / Delta^T (G + lambda I) Delta`` (Martens & Grosse
       2015, section
   6.4, :func:`natgrad.optim.natural.quadratic_model_coefficients`), then ``lambda`` adapted by the
   reduction ratio (section 6.5) with the shared
   :func:`~natgrad.optim.natural.levenberg_marquardt_update`.

Only the direction depends on the metric, so the curves compare the geometries, not step-size
heuristics. This is a small loop of its own (no momentum, no amortisation) built from the shared
step's pure functions, not :class:`natgrad.optim.base.NaturalGradientOptimizer`, because the latter
takes a curvature representation with ``solve`` while here the solver is CG on a pulled-back metric.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from natgrad.curvature.exact import ggn_vector_product
from natgrad.experiments.geometry_study.directions import (
    mean_eigenvalue,
    steepest_descent_direction,
)
from natgrad.geometry.divergences import Divergence
from natgrad.geometry.pullback import PulledBackMetric, flat_parameters, model_outputs, unflatten
from natgrad.losses import build_loss
from natgrad.optim.natural import (
    levenberg_marquardt_update,
    quadratic_model_coefficients,
    reduction_ratio,
)
from natgrad.validation import require


@dataclass(frozen=True)
class MetricTrainingConfig:
    """Settings of :func:`train_with_metric` (validated here)."""

    steps: int = 150
    batch_size: int = 200
    cg_iterations: int = 20
    relative_damping: float = 1e-2
    initial_damping: float = 1.0
    lm_factor: float = 2.0 / 3.0
    eval_every: int = 10
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "cg_iterations", "eval_every"):
            value = getattr(self, name)
            require(value >= 1, f"MetricTrainingConfig.{name}", value, "an integer >= 1")
        for name in ("relative_damping", "initial_damping"):
            value = getattr(self, name)
            require(value > 0, f"MetricTrainingConfig.{name}", value, "a number > 0")
        lm_factor = self.lm_factor
        require(
            0 < lm_factor < 1, "MetricTrainingConfig.lm_factor", lm_factor, "a number in (0, 1)"
        )


@dataclass
class TrainingCurve:
    """Evaluation points of one run: step, training-batch loss, held-out loss, damping."""

    label: str
    steps: list[int] = field(default_factory=list)
    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    damping: list[float] = field(default_factory=list)
    cg_iterations: list[int] = field(default_factory=list)


def _loss_and_gradient(model: nn.Module, x: Tensor, eps: Tensor | None, theta: Tensor):
    loss = build_loss(model, x, eps=eps) if eps is not None else build_loss(model, x)
    params = unflatten(model, theta.detach().requires_grad_(True))
    value = loss.value_at(params)
    grads = torch.autograd.grad(value, list(params.values()))
    return loss, float(value.detach()), torch.cat([g.reshape(-1) for g in grads])


def _evaluate(model: nn.Module, x: Tensor, theta: Tensor, eps: Tensor | None) -> float:
    loss = build_loss(model, x, eps=eps) if eps is not None else build_loss(model, x)
    with torch.no_grad():
        return float(loss.value_at(unflatten(model, theta)))


def train_with_metric(
    model: nn.Module,
    train: Tensor,
    test: Tensor,
    divergence: Divergence | None,
    config: MetricTrainingConfig,
    label: str,
) -> TrainingCurve:
    """Train ``model`` in place from its current parameters; returns the evaluation curve."""
    generator = torch.Generator().manual_seed(config.seed)
    latent = getattr(model, "latent_dim", None)
    test_eps = (
        None
        if latent is None
        else torch.randn(test.shape[0], latent, generator=generator, dtype=test.dtype)
    )
    theta, damping, curve = flat_parameters(model), config.initial_damping, TrainingCurve(label)
    for step in range(config.steps + 1):
        index = torch.randint(0, train.shape[0], (config.batch_size,), generator=generator)
        x = train[index]
        eps = (
            None
            if latent is None
            else torch.randn(x.shape[0], latent, generator=generator, dtype=x.dtype)
        )
        loss, value, gradient = _loss_and_gradient(model, x, eps, theta)
        if step % config.eval_every == 0:
            curve.steps.append(step)
            curve.train_loss.append(value)
            curve.test_loss.append(_evaluate(model, test, theta, test_eps))
            curve.damping.append(damping)
        if step == config.steps:
            break
        iterations = 0
        if divergence is None:
            direction = -gradient
        else:
            metric = PulledBackMetric(model_outputs(model, x, eps), theta, divergence)
            scale = mean_eigenvalue(metric.quadratic_form, metric.dim, 4, generator, theta.dtype)
            solved = steepest_descent_direction(
                metric.matvec, gradient, config.relative_damping * scale, config.cg_iterations
            )
            direction, iterations = -solved.solution, solved.iterations
        params = unflatten(model, theta)
        curvature = torch.cat(
            [
                c.reshape(-1)
                for c in ggn_vector_product(
                    loss, list(unflatten(model, direction).values()), params
                )
            ]
        )
        gram = (direction @ curvature + damping * direction @ direction).reshape(1, 1)
        step_model = quadratic_model_coefficients(gram, (gradient @ direction).reshape(1))
        candidate = theta + step_model.alpha * direction
        new_value = _evaluate(model, x, candidate, eps)
        rho = reduction_ratio(new_value - value, step_model.predicted_change)
        damping = levenberg_marquardt_update(damping, rho, config.lm_factor, 1.0 / config.lm_factor)
        if math.isfinite(new_value) and new_value <= value:
            theta = candidate
        if step % config.eval_every == 0:
            curve.cg_iterations.append(iterations)
    with torch.no_grad():
        for p, value in zip(model.parameters(), unflatten(model, theta).values()):
            p.copy_(value)
    return curve
