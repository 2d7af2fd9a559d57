"""Atomic files: a checkpoint (or any file) is either the old complete one or the new complete one.

Every write goes through :func:`natgrad.data.cache.atomic_write_bytes`: a temporary file in the
same directory, flushed and ``fsync``-ed, ``os.replace``-d over the target (atomic on POSIX), then
an ``fsync`` of the directory so the rename itself survives a crash. A
process killed at any instant (SIGKILL included) leaves no half-written checkpoint behind.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import torch

from natgrad.data.cache import atomic_write_bytes

CHECKPOINT_NAME = "checkpoint.pt"


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Serialise ``state`` with ``torch.save`` to ``run_dir/checkpoint.pt`` atomically; return the path."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    path = Path(run_dir) / CHECKPOINT_NAME
    atomic_write_bytes(path, buffer.getvalue())
    return path


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """The state saved by :func:`save_checkpoint` in ``run_dir``.

    Raises:
        FileNotFoundError: ``run_dir`` holds no checkpoint (the message names the path).
    """
    path = Path(run_dir) / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}; was the run started with this directory as out_dir?")
    return torch.load(path, map_location="cpu", weights_only=False)
