"""Two processes at global batch B equal one process at batch B, for every data-parallel optimizer.

The one-process reference sees the same examples and draws the same Monte-Carlo targets: the
statistics batch is cut into the same two strided shards, each with the generator of the process
that owns it (``schedule.statistics_shards = 2``, natgrad.distributed.shards). Everything else
(gradients, Gram entries, ``rho``, Hessian-free's CG products) is a mean over the global batch in
both. In float64 the parameters after 5 steps agree to 1e-10; the differences left are the
reduction order of the means (a sum over two halves instead of one sum), about 1e-16 relative
per step, amplified by the damped solves.
"""

from __future__ import annotations

from functools import partial

import pytest
import torch
from process_group import run_processes, values

from natgrad.distributed import ProcessGroupCommunicator, average_gradients, current_communicator
from natgrad.losses import build_loss
from natgrad.models import VAE, DeepAutoencoder
from natgrad.optim import KFAC, DiagonalNaturalGradient, HessianFree

STEPS = 5
SIZES = [16, 8, 4]
# Short periods so 5 steps exercise the LM update (steps 2, 4), a gamma search (step 3) and several
# refreshes (steps 1-4), i.e. several synchronisations of the moving averages.
NATURAL = {
    "damping": {"initial": 1.0, "adapt_every": 2, "gamma_every": 3, "adapt_gamma": True},
    "schedule": {"inverse_every": 2, "statistics_fraction": 0.5},
}


def natural(cls, shards: int, **extra):
    settings = {**NATURAL, "schedule": {**NATURAL["schedule"], "statistics_shards": shards}}
    return lambda model: cls(model, **settings, **extra)


#: name -> (model kind, optimizer factory given the statistics shards per process, torch optimizer?)
CASES = {
    "kfac": ("autoencoder", lambda shards: natural(KFAC, shards), False),
    "kfac-eigen": (
        "autoencoder",
        lambda shards: natural(KFAC, shards, inverse_method="eigen"),
        False,
    ),
    "kfac-tridiagonal": (
        "autoencoder",
        lambda shards: natural(KFAC, shards, structure="tridiagonal"),
        False,
    ),
    "kfac-vae": ("vae", lambda shards: natural(KFAC, shards), False),
    "diag": ("autoencoder", lambda shards: natural(DiagonalNaturalGradient, shards), False),
    "hf": (
        "autoencoder",
        lambda shards: partial(HessianFree, damping=1.0, curvature_fraction=0.5),
        False,
    ),
    "adam": (
        "autoencoder",
        lambda shards: lambda model: torch.optim.Adam(model.parameters(), lr=1e-2),
        True,
    ),
    "sgd": (
        "autoencoder",
        lambda shards: lambda model: torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9),
        True,
    ),
}


def batches(kind: str, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor | None]]:
    """``STEPS`` global batches (binary images, and a VAE's noise), the same on every process."""
    generator = torch.Generator().manual_seed(1)
    out = []
    for _ in range(STEPS):
        x = (torch.rand(batch_size, SIZES[0], generator=generator) < 0.3).to(
            torch.get_default_dtype()
        )
        eps = torch.randn(batch_size, SIZES[-1], generator=generator) if kind == "vae" else None
        out.append((x, eps))
    return out


def make_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)  # "default" init draws from torch's generator
    return VAE(SIZES) if kind == "vae" else DeepAutoencoder(SIZES, init="default")


def train(case: str, dtype: torch.dtype, batch_size: int, shards: int | None = None) -> dict:
    """``STEPS`` steps of ``case`` on this process's shard of each global batch (the whole batch on
    one process).

    The statistics use two shards in all (one per process, or ``shards`` on one process, 2 by
    default).
    """
    torch.set_default_dtype(dtype)
    comm = current_communicator()
    kind, factory, first_order = CASES[case]
    model = make_model(kind)
    optimizer = factory(1 if comm.distributed else shards or 2)(model)
    for x, eps in batches(kind, batch_size):
        x = x[comm.rank :: comm.world_size]
        eps = None if eps is None else eps[comm.rank :: comm.world_size]

        def closure():
            optimizer.zero_grad(set_to_none=True)
            loss = build_loss(model, x, eps=eps)
            loss.backward()
            if first_order:
                average_gradients(comm, list(model.parameters()), loss.value, loss.batch_size)
            return loss

        optimizer.step(closure)
    owners = getattr(
        getattr(getattr(optimizer, "curvature", None), "run_jobs", None), "last_owners", {}
    )
    return {
        "parameters": {n: p.detach().clone() for n, p in model.named_parameters()},
        "owners": dict(owners),
    }


def on_two_processes() -> dict[str, dict]:
    """Every case in float64 at global batch 16 (shards of 8), K-FAC at 15 (8 and 7) and in float32;
    the
    communicator's collectives.
    """
    even = {case: train(case, torch.float64, 16) for case in CASES}
    return {
        "even": even,
        "uneven": train("kfac", torch.float64, 15),
        "float32": train("kfac", torch.float32, 16),
        "communicator": communicator_checks(),
    }


def communicator_checks() -> dict:
    """Process r holds values r + 1 with weight r + 1; 64-byte buckets: several per call."""
    comm = ProcessGroupCommunicator(bucket_bytes=64)
    weight = float(comm.rank + 1)
    means = [
        torch.full((10,), weight),
        torch.full((10,), 2 * weight),
        torch.full((3,), weight, dtype=torch.float64),
    ]
    total = comm.weighted_mean_(means, weight)
    broadcast = [torch.full((5,), weight, dtype=torch.bfloat16), torch.full((40,), weight)]
    comm.broadcast_(broadcast, source=1)
    try:
        comm.on_rank_zero(lambda: int("process 0's error"))
    except ValueError as error:
        raised = str(error)
    return {
        "means": means,
        "total": total,
        "broadcast": broadcast,
        "raised": raised,
        "gathered": comm.all_gather(torch.tensor([comm.rank])),
        "calls": comm.traffic.calls,
    }


@pytest.fixture(scope="module")
def two_processes() -> list[dict]:
    """One start of two processes for every test of this module."""
    return values(run_processes(on_two_processes))


def on_one_process(
    case: str, dtype: torch.dtype = torch.float64, batch_size: int = 16, shards: int = 2
) -> dict:
    old = torch.get_default_dtype()
    try:
        return train(case, dtype, batch_size, shards)["parameters"]
    finally:
        torch.set_default_dtype(old)


def initial_parameters(case: str) -> dict:
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return {n: p.detach().clone() for n, p in make_model(CASES[case][0]).named_parameters()}
    finally:
        torch.set_default_dtype(old)


def max_difference(a: dict, b: dict) -> float:
    return max(float((a[n] - b[n]).abs().max()) for n in a)


@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_give_the_parameters_of_one_process_at_the_same_global_batch(
    two_processes, case
):
    expected = on_one_process(case)
    assert (
        max_difference(expected, initial_parameters(case)) > 0.01
    )  # the steps moved the parameters
    first, second = (result["even"][case]["parameters"] for result in two_processes)
    assert all(torch.equal(first[n], second[n]) for n in first), (
        "the processes' parameters are not identical"
    )
    difference = max_difference(first, expected)
    assert difference < 1e-10, f"{case}: 2 processes and 1 differ by {difference:.3g}"


def test_the_reference_needs_the_processes_sampled_targets(two_processes):
    # K-FAC's statistics with the targets of one generator for the whole batch: far from the
    # 2-process run.
    assert (
        max_difference(
            two_processes[0]["even"]["kfac"]["parameters"], on_one_process("kfac", shards=1)
        )
        > 1e-6
    )


def test_unequal_shards_are_weighted_by_their_examples(two_processes):
    # global batch 15: process 0 holds 8 examples, process 1 holds 7; every mean is over the 15.
    difference = max_difference(
        two_processes[0]["uneven"]["parameters"], on_one_process("kfac", batch_size=15)
    )
    assert difference < 1e-10


def test_float32_agrees_to_its_rounding(two_processes):
    # float32 rounds each sum to 2^-24 ~ 6e-8 relative, and the two runs sum in different orders
    # (two half-batch means, then their mean); after 5 steps through the damped solves the largest
    # difference measured is 1.8e-7 on parameters of size ~0.5. Tolerance 1e-5: 50 times that.
    difference = max_difference(
        two_processes[0]["float32"]["parameters"], on_one_process("kfac", torch.float32)
    )
    assert difference < 1e-5


def test_refresh_jobs_are_spread_over_the_processes(two_processes):
    owners = [result["even"]["kfac"]["owners"] for result in two_processes]
    assert (
        owners[0] == owners[1] and len(owners[0]) == 8
    )  # 4 layers x (A, B), same assignment everywhere
    mine = [{job for job, owner in owners[0].items() if owner == rank} for rank in (0, 1)]
    assert mine[0] and mine[1] and not mine[0] & mine[1] and mine[0] | mine[1] == set(owners[0])


def test_collectives_are_example_weighted_bucketed_and_typed(two_processes):
    # weights 1 and 2: the mean of (1, 2) is 5/3, of (2, 4) 10/3; broadcasts keep each dtype.
    for result in two_processes:
        checks = result["communicator"]
        assert checks["total"] == 3.0
        assert [float(t[0]) for t in checks["means"]] == pytest.approx(
            [5 / 3, 10 / 3, 5 / 3], rel=1e-6
        )
        assert (
            checks["means"][2].dtype == torch.float64
            and checks["broadcast"][0].dtype == torch.bfloat16
        )
        assert all(bool((t == 2.0).all()) for t in checks["broadcast"])  # process 1's values
        assert (
            "invalid literal for int()" in checks["raised"]
        )  # process 0's exception, on every process
        assert [int(t) for t in checks["gathered"]] == [0, 1]
        assert (
            checks["calls"] >= 6
        )  # 3 buckets of means, 2 of broadcasts, the error's broadcast, ...
