r"""Preconditioned conjugate gradient with Martens' stopping rule (Martens 2010, sections 4.4-4.6).

CG minimises the quadratic ``phi(x) = 1/2 x^T B x - b^T x`` (``B = G + lambda I`` in Hessian-free,
``b = -grad``) from a warm start ``x_0``. It stops on *relative progress* (section 4.4): at
iteration ``i`` with ``k = max(min_gap, ceil(gap_ratio * i))``, stop when

.. math::  i > k, \quad \phi(x_{i-k}) < 0 \quad\text{and}\quad
           \frac{\phi(x_i) - \phi(x_{i-k})}{\phi(x_i)} < k \epsilon,

``epsilon = 5e-4``, ``gap_ratio = 0.1``, ``min_gap = 10`` (Martens' ``conjgrad_1.m``). Iterates are
stored at ``i = ceil(5 * 1.3^j)`` plus the last one, for backtracking (section 4.6). Why CG stopped
is always returned (:class:`StopReason`), never swallowed.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from torch import Tensor

from natgrad.validation import require


class StopReason(str, Enum):
    """Why :func:`conjugate_gradient` returned."""

    RELATIVE_PROGRESS = "relative-progress"  # Martens' rule (module docstring)
    MAX_ITERATIONS = "max-iterations"
    RESIDUAL_VANISHED = "residual-vanished"  # the iterate solves the system exactly
    NON_POSITIVE_CURVATURE = (
        "non-positive-curvature"  # B is not positive definite along a direction
    )
    NON_FINITE = "non-finite"  # a product with B was NaN or Inf


@dataclass
class CGResult:
    """Outcome of :func:`conjugate_gradient`.

    Attributes:
        solution: the final iterate ``x_i``.
        iterates: ``(i, x_i)`` stored at ``i = ceil(5 * 1.3^j)`` and at the last iteration,
            ascending.
        iterations: number of CG iterations taken.
        stop_reason: why CG stopped.
        objective: ``phi(x_i)`` at the final iterate.
        objectives: ``phi(x_j)`` for ``j = 0 .. iterations`` (``x_0`` the warm start).
    """

    solution: Tensor
    iterates: list[tuple[int, Tensor]] = field(default_factory=list)
    iterations: int = 0
    stop_reason: StopReason = StopReason.MAX_ITERATIONS
    objective: float = 0.0
    objectives: list[float] = field(default_factory=list)


def storage_schedule(max_iterations: int, first: float = 5.0, factor: float = 1.3) -> set[int]:
    """Iterations ``ceil(first * factor^j) <= max_iterations`` whose iterates are kept (section
    4.6).
    """
    steps, value = set(), first
    while math.ceil(value) <= max_iterations:
        steps.add(math.ceil(value))
        value *= factor
    return steps


def _made_progress(
    values: list[float], i: int, gap_ratio: float, min_gap: int, tolerance: float
) -> bool:
    """Martens' relative-progress test; ``values[j] = phi(x_j)``, ``values[0]`` the warm start."""
    k = max(min_gap, math.ceil(gap_ratio * i))
    if i <= k or not values[i - k] < 0:
        return True
    return (values[i] - values[i - k]) / values[i] >= k * tolerance


def conjugate_gradient(
    matvec: Callable[[Tensor], Tensor],
    b: Tensor,
    x0: Tensor,
    preconditioner: Tensor | None = None,
    max_iterations: int = 250,
    tolerance: float = 5e-4,
    gap_ratio: float = 0.1,
    min_gap: int = 10,
) -> CGResult:
    r"""Minimise ``1/2 x^T B x - b^T x`` with preconditioned CG (Martens 2010, Algorithm 2 and 4.4).

    Args:
        matvec: ``v -> B v`` on flat vectors; ``B`` symmetric positive definite.
        b: right-hand side, flat.
        x0: warm start (Hessian-free passes ``0.95`` times the previous solution, section 4.5).
        preconditioner: diagonal ``M`` (the iteration applies ``M^{-1}``), or None.
        max_iterations: hard cap (250 in Martens' code).
        tolerance: ``epsilon`` of the relative-progress rule above.
        gap_ratio: ``k = max(min_gap, ceil(gap_ratio * i))`` iterations back, in that rule.
        min_gap: the smallest ``k``.

    Raises:
        ValueError: a shape mismatch, a non-positive preconditioner entry or a bad setting.
    """
    if max_iterations < 1 or tolerance <= 0 or min_gap < 1:
        raise ValueError(
            f"conjugate_gradient needs max_iterations >= 1, tolerance > 0, min_gap >= 1; got "
            f"{max_iterations}, {tolerance}, {min_gap}"
        )
    if b.shape != x0.shape or (preconditioner is not None and preconditioner.shape != b.shape):
        raise ValueError(
            f"conjugate_gradient: b {tuple(b.shape)} and x0 {tuple(x0.shape)} (and preconditioner) "
            "must match"
        )
    positive = preconditioner is None or bool((preconditioner > 0).all())
    require(positive, "conjugate_gradient preconditioner", "an entry <= 0", "entries > 0")
    keep = storage_schedule(max_iterations)
    x = x0.clone()
    residual = matvec(x) - b
    y = residual if preconditioner is None else residual / preconditioner
    direction = -y
    residual_dot = float(residual @ y)
    values = [0.5 * float((residual - b) @ x)]  # phi(x) = 1/2 (B x - b - b)^T x
    result = CGResult(solution=x)
    for i in range(1, max_iterations + 1):
        if residual_dot == 0.0:
            result.stop_reason = StopReason.RESIDUAL_VANISHED
            break
        curvature_direction = matvec(direction)
        curvature = float(direction @ curvature_direction)
        if not math.isfinite(curvature):
            result.stop_reason = StopReason.NON_FINITE
            break
        if not curvature > 0:
            result.stop_reason = StopReason.NON_POSITIVE_CURVATURE
            break
        step = residual_dot / curvature
        x = x + step * direction
        residual = residual + step * curvature_direction
        y = residual if preconditioner is None else residual / preconditioner
        new_residual_dot = float(residual @ y)
        direction = -y + (new_residual_dot / residual_dot) * direction
        residual_dot = new_residual_dot
        values.append(0.5 * float((residual - b) @ x))
        result.iterations, result.solution = i, x
        if i in keep:
            result.iterates.append((i, x))
        if not _made_progress(values, i, gap_ratio, min_gap, tolerance):
            result.stop_reason = StopReason.RELATIVE_PROGRESS
            break
    if not result.iterates or result.iterates[-1][0] != result.iterations:
        result.iterates.append((result.iterations, result.solution))
    result.objective = values[result.iterations]
    result.objectives = values
    return result
