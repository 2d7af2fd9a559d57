r"""Statistics shards: which examples' Monte-Carlo targets each generator draws.

K-FAC and the diagonal method estimate their statistics with targets sampled from the model
(Martens & Grosse 2015, section 5), so a data-parallel run must say which generator draws the
targets of which example; natgrad makes that a property of the *global* batch, not of the number
of processes. The statistics batch (the first ``tau_1`` of each shard) is cut into ``K`` strided
shards, shard ``j`` holding the global examples ``j, j + K, j + 2K, ...``; shard ``j`` draws its
targets from its own generator, seeded :func:`shard_seed` ``(seed, j)``; the statistics are the
example-weighted mean over the shards.

With ``W`` processes and ``S`` shards per process (``ScheduleConfig.statistics_shards``),
``K = W S``: process ``r`` holds the global examples ``r, r + W, ...`` (the runner's strided
sharding) and its local shard ``s`` is global shard ``r + W s`` (:func:`process_shards`). So a
run's statistics depend on ``K`` only: two processes with one shard each draw exactly what one
process with ``statistics_shards = 2`` draws, which is how a distributed run is reproduced (and
tested) on one process. Shard 0 uses ``seed`` itself, so a one-process run with one shard is the
run natgrad made before shards existed.
"""

from __future__ import annotations

import hashlib


def shard_seed(seed: int, shard: int) -> int:
    """``seed`` for shard 0, otherwise an independent 63-bit seed derived from ``(seed, shard)``."""
    if shard == 0:
        return seed
    digest = hashlib.sha256(f"natgrad statistics shard/{seed}/{shard}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def process_shards(rank: int, world_size: int, shards_per_process: int) -> list[int]:
    """The global shard indices of process ``rank``'s local shards ``0 .. S-1``: ``rank + W s``."""
    return [rank + world_size * s for s in range(shards_per_process)]
