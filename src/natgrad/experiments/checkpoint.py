"""Atomic files: a checkpoint (or any file) is either the old complete one or the new complete one.

Write to a temporary file in the same directory, flush and ``fsync`` it, ``os.replace`` it over the
target (atomic on POSIX), then ``fsync`` the directory so the rename itself survives a crash. A
process killed at any instant (SIGKILL included) leaves no half-written checkpoint behind.
"""
from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

CHECKPOINT_NAME = "checkpoint.pt"


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (temp file, fsync, rename, fsync of the directory)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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
