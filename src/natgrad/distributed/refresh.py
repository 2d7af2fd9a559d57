r"""Refresh work spread over processes: each block's factorisation computed once, then broadcast.

A representation's refresh (eigendecompositions, or the damped inverses for a new ``gamma``) is a
list of independent :class:`~natgrad.curvature.base.BlockJob`\ s, one per Kronecker factor (or per
layer for tridiagonal K-FAC), each with a cost estimate (``d^3`` for a ``d x d`` factor). With
``W`` processes, :func:`assign_jobs` gives each job an owner by the greedy longest-processing-time
rule (Graham 1969; KAISA's ``greedy_assignment``, Pauloski et al. 2021): jobs in decreasing cost,
each to the process with the least work so far, ties to the lowest rank. It depends only on the
costs, so every process computes the same assignment without communicating. The owner computes
its jobs; then each process broadcasts its results to the others (one bucketed broadcast per
process that owns jobs). Every process ends with every factorisation, bitwise the owner's, so the
directions (and the updates) are identical everywhere - KAISA's COMM-OPT end of its memory /
communication trade-off (docs/distributed.md).

A job that fails (a Cholesky factor that is not positive definite, an eigendecomposition that does
not converge) is reported to every process before any broadcast, and every process raises
``torch.linalg.LinAlgError``, so the optimizer rejects the step everywhere alike.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from natgrad.curvature.base import BlockJob
from natgrad.distributed.communicator import Communicator


def assign_jobs(costs: Sequence[float], world_size: int) -> list[int]:
    """The owner (a rank in ``[0, world_size)``) of each job, by greedy longest-processing-time.

    Raises:
        ValueError: ``world_size < 1`` or a negative cost.
    """
    if world_size < 1 or any(c < 0 for c in costs):
        raise ValueError(
            f"assign_jobs needs world_size >= 1 and costs >= 0, got {world_size} and {list(costs)}"
        )
    loads = [0.0] * world_size
    owners = [0] * len(costs)
    for job in sorted(range(len(costs)), key=lambda j: (-costs[j], j)):
        owner = min(range(world_size), key=lambda r: (loads[r], r))
        owners[job] = owner
        loads[owner] += costs[job]
    return owners


class DistributedJobs:
    """Runs a representation's refresh jobs across the processes of ``communicator`` (module
    docstring).

    Installed as :attr:`natgrad.curvature.base.CurvatureRepresentation.run_jobs` by a data-parallel
    optimizer. :attr:`last_owners` maps the job names of the last call to their owners.
    """

    def __init__(self, communicator: Communicator) -> None:
        self.communicator = communicator
        self.last_owners: dict[str, int] = {}

    def __call__(self, jobs: Sequence[BlockJob]) -> list[tuple[Tensor, ...]]:
        """Every job's outputs on every process.

        Raises:
            torch.linalg.LinAlgError: a job failed on some process (on every process alike).
        """
        comm = self.communicator
        owners = assign_jobs([job.cost for job in jobs], comm.world_size)
        self.last_owners = {job.name: owner for job, owner in zip(jobs, owners)}
        results, error = self._compute_own(jobs, owners)
        failed = comm.sum_scalars([0.0 if error is None else 1.0])[0]
        if failed:
            local = f"; here: {error}" if error is not None else ""
            raise torch.linalg.LinAlgError(
                f"a refresh job failed on {int(failed)} of {comm.world_size} processes{local}"
            )
        for source in range(comm.world_size):
            owned = [t for result, owner in zip(results, owners) if owner == source for t in result]
            if owned:
                comm.broadcast_(owned, source)
        return results

    def _compute_own(
        self, jobs: Sequence[BlockJob], owners: list[int]
    ) -> tuple[list[tuple[Tensor, ...]], Exception | None]:
        """This process's jobs computed (others' outputs allocated for the broadcasts), and its
        first error.
        """
        rank, results, error = self.communicator.rank, [], None
        for job, owner in zip(jobs, owners):
            empty = tuple(torch.empty(shape, dtype=dtype) for shape, dtype in job.outputs)
            if owner != rank or error is not None:
                results.append(empty)
                continue
            # contiguous like the receivers' copies: a product's rounding depends on the layout
            try:
                result = tuple(t.contiguous() for t in job.compute())
            except torch.linalg.LinAlgError as failure:
                error, result = failure, empty
            else:
                _check_outputs(job, result)
            results.append(result)
        return results, error


def _check_outputs(job: BlockJob, result: tuple[Tensor, ...]) -> None:
    """Raises RuntimeError when a job's outputs differ from the shapes and dtypes it declared."""
    got = [(tuple(t.shape), t.dtype) for t in result]
    declared = [(tuple(shape), dtype) for shape, dtype in job.outputs]
    if got != declared:
        raise RuntimeError(f"refresh job {job.name!r} returned {got}, but declared {declared}")
