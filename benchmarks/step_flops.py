r"""The arithmetic of one K-FAC step against one Adam step, counted, on a paper autoencoder.

A step's time on a CPU is mostly its matrix products, so the floating-point operations (FLOPs) of
those products bound how cheap a step can get at a given rate: if K-FAC's step needs ``r`` times
the FLOPs of Adam's step at the same batch, it cannot take less than about ``r`` times Adam's
time, whatever the implementation, unless it changes what it computes. This script counts them
with ``torch.utils.flop_counter.FlopCounterMode`` (matrix products, ``2 m n k`` each, including
the batched ones of the forward-mode pass under ``vmap``) plus the factorisations that counter
does not know: Cholesky ``n^3 / 3`` multiply-adds and the inverse from it ``2 n^3 / 3``.
Element-wise work (activations, Adam's moments) is not counted; it is a small share of the FLOPs
on these networks. It splits the K-FAC step (natgrad's defaults, or the options given) into its
phases:

* ``loss and gradient``: the closure (forward and backward pass on the batch), all an Adam step
  computes besides its element-wise update;
* ``statistics``: the sampled backward pass on ``tau_1`` of the batch and the factor products;
* ``refresh``: the factors from the moving averages (every ``T3`` steps);
* ``inversions``: the damped factor inverses, rebuilt when ``gamma`` changes or after a refresh;
* ``damped solve``: ``Delta = -(B + ...)^{-1} G (A + ...)^{-1}`` per layer;
* ``quadratic model``: the forward-mode pass of :func:`natgrad.optim.quadratic_model.ggn_gram`
  (it includes one product of the first layer with the zero tangent of the data, which torch's
  forward-mode formula of a linear layer materialises under the counter; a custom rule without it
  took the same time, so it is counted as the pass runs);
* ``rho``: ``h(theta + delta)`` on the batch, every ``T1`` steps.

Counts are means per step over ``--steps`` steps after ``--warmup``, so the periodic phases
appear at their amortised rate. Counting runs the steps (on random data of the network's width:
the count depends on shapes only), so it takes as long as the steps themselves.

    .venv/bin/python benchmarks/step_flops.py --problem mnist
    .venv/bin/python benchmarks/step_flops.py --problem mnist --model-fraction 0.25
"""

from __future__ import annotations

import argparse
import functools
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from profile_step import random_batch, warmed_up_kfac  # benchmarks/ is the script's directory
from torch.utils.flop_counter import FlopCounterMode

import natgrad.optim.base as shared_step
from natgrad.losses import build_loss
from natgrad.models import DeepAutoencoder
from natgrad.models.autoencoder import ARCHITECTURES

aten = torch.ops.aten


def cholesky_flops(a_shape, *args, out_shape=None, **kwargs) -> int:
    """``n^3 / 3`` multiply-adds (``2 n^3 / 3`` FLOPs) per ``(n, n)`` matrix."""
    return 2 * a_shape[-1] ** 3 // 3


def cholesky_inverse_flops(a_shape, *args, out_shape=None, **kwargs) -> int:
    """``2 n^3 / 3`` multiply-adds (``4 n^3 / 3`` FLOPs): invert the triangle, then ``L^{-T}
    L^{-1}``.
    """
    return 4 * a_shape[-1] ** 3 // 3


FACTORISATIONS = {
    aten.linalg_cholesky_ex: cholesky_flops,
    aten.cholesky_inverse: cholesky_inverse_flops,
}


class PhaseCounter:
    """FLOPs per named phase; a phase called inside another is subtracted from the outer one."""

    def __init__(self) -> None:
        self.mode = FlopCounterMode(display=False, custom_mapping=FACTORISATIONS)
        self.flops: dict[str, int] = defaultdict(int)
        self._stack: list[list[int]] = []  # per open phase: [total at entry, nested FLOPs]

    def wrap(self, function: Callable, phase: str) -> Callable:
        """``function``, with its FLOPs (less those of phases it calls) added to ``phase``."""

        @functools.wraps(function)
        def counted(*args: Any, **kwargs: Any) -> Any:
            self._stack.append([self.mode.get_total_flops(), 0])
            try:
                return function(*args, **kwargs)
            finally:
                start, nested = self._stack.pop()
                spent = self.mode.get_total_flops() - start
                self.flops[phase] += spent - nested
                if self._stack:
                    self._stack[-1][1] += spent

        return counted


def count_kfac(
    problem: str, batch: int, warmup: int, steps: int, options: dict[str, Any]
) -> dict[str, float]:
    """Mean FLOPs per K-FAC step and phase (module docstring), after ``warmup`` steps."""
    optimizer, closure = warmed_up_kfac(problem, options, batch, warmup)
    counter = PhaseCounter()
    curvature = optimizer.curvature
    for name, phase in [
        ("capture", "statistics"),
        ("update", "statistics"),
        ("refresh", "refresh"),
        ("_shifted_factors", "inversions"),
        ("solve", "damped solve"),
    ]:
        setattr(curvature, name, counter.wrap(getattr(curvature, name), phase))
    optimizer._new_objective = counter.wrap(optimizer._new_objective, "rho")
    original_gram = shared_step.ggn_gram
    shared_step.ggn_gram = counter.wrap(original_gram, "quadratic model")
    counted_closure = counter.wrap(closure, "loss and gradient")
    try:
        with counter.mode:
            for _ in range(steps):
                optimizer.step(counted_closure)
    finally:
        shared_step.ggn_gram = original_gram
    total = counter.mode.get_total_flops()
    phases = {name: value / steps for name, value in counter.flops.items()}
    phases["other"] = (total - sum(counter.flops.values())) / steps
    return phases


def count_adam(problem: str, batch: int) -> float:
    """FLOPs of one Adam step: the loss and gradient (its update is element-wise)."""
    model = DeepAutoencoder.for_problem(problem, generator=torch.Generator().manual_seed(0))
    x = random_batch(model, batch)
    mode = FlopCounterMode(display=False)
    with mode:
        build_loss(model, x).value.backward()
    return float(mode.get_total_flops())


def report(problem: str, batch: int, phases: dict[str, float], adam: float, label: str) -> str:
    """A markdown table of the phases in GFLOP per step and in Adam steps."""
    lines = [
        f"{problem} autoencoder, batch {batch}, K-FAC {label}: FLOPs per step (mean, amortised)",
        "",
        "| phase | GFLOP per step | in Adam steps |",
        "|---|---:|---:|",
    ]
    for name, value in sorted(phases.items(), key=lambda item: -item[1]):
        lines.append(f"| {name} | {value / 1e9:.2f} | {value / adam:.2f} |")
    total = sum(phases.values())
    lines.append(f"| **K-FAC step** | **{total / 1e9:.2f}** | **{total / adam:.2f}** |")
    lines.append(f"| Adam step (loss and gradient) | {adam / 1e9:.2f} | 1.00 |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=sorted(ARCHITECTURES), default="mnist")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument(
        "--model-fraction", type=float, default=None, help="step.model_fraction (a departure)"
    )
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    options: dict[str, Any] = {}
    label = "defaults"
    if args.model_fraction is not None:
        options["step"] = {"model_fraction": args.model_fraction}
        label = f"model on {args.model_fraction:g} of the batch"
    phases = count_kfac(args.problem, args.batch, args.warmup, args.steps, options)
    print(report(args.problem, args.batch, phases, count_adam(args.problem, args.batch), label))


if __name__ == "__main__":
    main()
