"""Run a function on the processes of a gloo process group, with a timeout so a hang fails instead
of blocking CI.

Processes are forked from a forkserver that has imported torch and natgrad once, so each costs a
fork rather than an interpreter start; the port is taken from a socket bound to port 0.
"""

from __future__ import annotations

import datetime
import multiprocessing
import os
import socket
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist

#: Seconds a test's processes may take in all (collectives time out after a third of it).
TIMEOUT = 180.0


@dataclass(frozen=True)
class Outcome:
    """What one process left: its exit code, and the function's return value or the traceback it
    raised.
    """

    exitcode: int | None
    value: Any = None
    error: str | None = None


def free_port() -> int:
    """A TCP port free at the time of the call (bound to port 0, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_environment(rank: int, world_size: int, port: int) -> dict[str, str]:
    """The variables torchrun sets for process ``rank``."""
    return {
        "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": str(port),
        "RANK": str(rank),
        "LOCAL_RANK": str(rank),
        "WORLD_SIZE": str(world_size),
        "LOCAL_WORLD_SIZE": str(world_size),
    }


def _entry(
    rank: int, world_size: int, port: int, init: bool, fn: Callable, args: tuple, out: str
) -> None:
    os.environ.update(torchrun_environment(rank, world_size, port))
    torch.set_num_threads(1)
    if init:
        dist.init_process_group(
            "gloo",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=TIMEOUT / 3),
        )
    try:
        value, error = fn(*args), None
        if init:
            # every process done before any closes its connections (gloo aborts a peer otherwise)
            dist.barrier()
    except BaseException:  # noqa: BLE001 - reported to the test
        value, error = None, traceback.format_exc()
    finally:
        if init and dist.is_initialized():
            dist.destroy_process_group()
    torch.save({"value": value, "error": error}, out)


def run_processes(
    fn: Callable, args: tuple = (), world_size: int = 2, init: bool = True
) -> list[Outcome]:
    """``fn(*args)`` on ``world_size`` processes (a gloo group initialised unless ``init`` is
    false).

    Fails the test when the processes are still running after :data:`TIMEOUT` seconds.
    """
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(["torch", "natgrad"])
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        outs = [str(Path(tmp) / f"rank{rank}.pt") for rank in range(world_size)]
        processes = [
            context.Process(
                target=_entry, args=(rank, world_size, port, init, fn, args, outs[rank])
            )
            for rank in range(world_size)
        ]
        for process in processes:
            process.start()
        deadline = datetime.datetime.now() + datetime.timedelta(seconds=TIMEOUT)
        for process in processes:
            process.join(max(0.0, (deadline - datetime.datetime.now()).total_seconds()))
        hung = [rank for rank, process in enumerate(processes) if process.is_alive()]
        for process in processes:
            if process.is_alive():
                process.kill()
                process.join()
        if hung:
            pytest.fail(f"processes {hung} were still running after {TIMEOUT:g} s")
        outcomes = []
        for process, out in zip(processes, outs):
            saved = torch.load(out, weights_only=False) if Path(out).is_file() else {}
            outcomes.append(Outcome(process.exitcode, saved.get("value"), saved.get("error")))
        return outcomes


def values(outcomes: list[Outcome]) -> list[Any]:
    """Every process's return value, failing the test with the first error."""
    for rank, outcome in enumerate(outcomes):
        if outcome.error is not None or outcome.exitcode != 0:
            pytest.fail(f"process {rank} failed (exit code {outcome.exitcode}):\n{outcome.error}")
    return [outcome.value for outcome in outcomes]
