"""Data-parallel natgrad on ``torch.distributed``: collectives, refresh assignment, statistics
shards, launching.

Sits between :mod:`natgrad.curvature` and :mod:`natgrad.optim`: the optimizers use a
:class:`Communicator` (one process, or :class:`ProcessGroupCommunicator` when a process group of
several processes is initialised); the runner and the CLI use :mod:`natgrad.distributed.launch`.
See docs/distributed.md for the design.
"""

from natgrad.distributed.communicator import (
    Communicator,
    PeerLostError,
    ProcessGroupCommunicator,
    Traffic,
    average_gradients,
    current_communicator,
    refuse_data_parallel,
)
from natgrad.distributed.refresh import DistributedJobs, assign_jobs
from natgrad.distributed.shards import process_shards, shard_seed

__all__ = [
    "Communicator",
    "DistributedJobs",
    "PeerLostError",
    "ProcessGroupCommunicator",
    "Traffic",
    "assign_jobs",
    "average_gradients",
    "current_communicator",
    "process_shards",
    "refuse_data_parallel",
    "shard_seed",
]
