r"""Where a K-FAC step's time goes on a paper autoencoder: cProfile of ``--steps`` steps.

The network is the paper architecture of ``--problem`` (``DeepAutoencoder.for_problem``); the
batch is random data of the network's input width (uniform pixels for a Bernoulli likelihood,
standard normal for FACES's Gaussian one), because a step's cost depends on the shapes only.
K-FAC runs with natgrad's defaults, or with the two bfloat16 departures (``--bfloat16``:
``solve_dtype`` and ``step.model_dtype``). ``--warmup`` steps come first, so the profile sees the
steady state: the inverse rebuilds after each ``lambda`` update, the refreshes and the ``rho``
evaluations in their usual proportion. Prints seconds per step and the functions with the most
internal time:

    .venv/bin/python benchmarks/profile_step.py --problem faces
    .venv/bin/python benchmarks/profile_step.py --problem faces --bfloat16
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable
from typing import Any

import torch

from natgrad.losses import Loss, build_loss
from natgrad.models import DeepAutoencoder
from natgrad.models.autoencoder import ARCHITECTURES
from natgrad.optim import KFAC


def random_batch(model: DeepAutoencoder, batch: int) -> torch.Tensor:
    """``batch`` inputs of the model's width: uniform in [0, 1] (Bernoulli) or standard normal."""
    shape = (batch, model.sizes[0])
    return torch.rand(shape) if model.likelihood_name == "bernoulli" else torch.randn(shape)


def warmed_up_kfac(
    problem: str, options: dict[str, Any], batch: int, warmup: int
) -> tuple[KFAC, Callable[[], Loss]]:
    """K-FAC with ``options`` on ``problem``'s paper autoencoder and a closure on one random batch,
    after ``warmup`` steps.
    """
    model = DeepAutoencoder.for_problem(problem, generator=torch.Generator().manual_seed(0))
    optimizer = KFAC(model, **options)
    x = random_batch(model, batch)

    def closure() -> Loss:
        optimizer.zero_grad()
        loss = build_loss(model, x)
        loss.value.backward()
        return loss

    for _ in range(warmup):
        optimizer.step(closure)
    return optimizer, closure


def profile_steps(problem: str, bfloat16: bool, batch: int, warmup: int, steps: int) -> None:
    """Run ``warmup`` K-FAC steps, then profile ``steps`` more and print the statistics."""
    options = {"step": {"model_dtype": "bfloat16"}, "solve_dtype": "bfloat16"} if bfloat16 else {}
    optimizer, closure = warmed_up_kfac(problem, options, batch, warmup)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    for _ in range(steps):
        optimizer.step(closure)
    profile.disable()
    seconds = (time.perf_counter() - start) / steps
    precision = "bfloat16 solve and model" if bfloat16 else "float32"
    print(f"{problem}, batch {batch}, {precision}: {seconds:.3f} s per step (profiled)")
    pstats.Stats(profile).sort_stats("tottime").print_stats(12)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=sorted(ARCHITECTURES), default="faces")
    parser.add_argument("--bfloat16", action="store_true")
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=25)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(args.threads)
    profile_steps(args.problem, args.bfloat16, args.batch, args.warmup, args.steps)


if __name__ == "__main__":
    main()
