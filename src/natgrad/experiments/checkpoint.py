"""Atomic, checksummed checkpoints: a checkpoint is either the old complete one or the new complete
one.

Every write goes through :func:`natgrad.data.cache.atomic_write_bytes`: a temporary file in the
same directory, flushed and ``fsync``-ed, ``os.replace``-d over the target (atomic on POSIX), then
an ``fsync`` of the directory so the rename itself survives a crash. A
process killed at any instant (SIGKILL included) leaves no half-written checkpoint behind.

``checkpoint.pt`` holds ``{"format": 1, "sha256": ..., "content": uint8 tensor}``, ``content`` being
the ``torch.save`` serialisation of the state and ``sha256`` its digest, checked on load: a damaged
file (truncated, overwritten, bits flipped) is refused with :class:`CheckpointError` naming it,
never loaded as wrong weights. Each save first renames the current checkpoint to
``checkpoint.prev.pt``, so :func:`load_checkpoint` can fall back to the previous good one.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import torch

from natgrad.data.cache import atomic_write_bytes

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
PREVIOUS_CHECKPOINT_NAME = "checkpoint.prev.pt"
FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint file is missing, damaged or does not belong to the run; the message names the
    file.
    """


def atomic_write_text(path: str | Path, text: str) -> None:
    """:func:`atomic_write_bytes` for UTF-8 text."""
    atomic_write_bytes(path, text.encode("utf-8"))


def _serialise(value: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def save_checkpoint(run_dir: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` with its checksum to ``run_dir/checkpoint.pt`` atomically, keeping the
    previous checkpoint as ``checkpoint.prev.pt``; return the path.
    """
    content = _serialise(state)
    envelope = {
        "format": FORMAT,
        "sha256": hashlib.sha256(content).hexdigest(),
        "content": torch.frombuffer(bytearray(content), dtype=torch.uint8),
    }
    path = Path(run_dir) / CHECKPOINT_NAME
    atomic_write_bytes(
        path, _serialise(envelope), previous=Path(run_dir) / PREVIOUS_CHECKPOINT_NAME
    )
    return path


def read_checkpoint_file(path: Path) -> dict[str, Any]:
    """The state stored in one checkpoint file, after checking its format and checksum.

    Raises:
        CheckpointError: the file is unreadable, not a natgrad checkpoint, or its checksum does not
            match.
    """
    try:
        envelope = torch.load(path, map_location="cpu", weights_only=False)
    except (
        Exception
    ) as error:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on damaged files
        raise CheckpointError(
            f"checkpoint {path} is damaged and cannot be read ({type(error).__name__}: "
            f"{str(error).splitlines()[0] if str(error) else 'no detail'})"
        ) from None
    if (
        not isinstance(envelope, dict)
        or envelope.get("format") != FORMAT
        or "content" not in envelope
    ):
        raise CheckpointError(f"checkpoint {path} is not a natgrad checkpoint of format {FORMAT}")
    content = envelope["content"].numpy().tobytes()
    if hashlib.sha256(content).hexdigest() != envelope.get("sha256"):
        raise CheckpointError(
            f"checkpoint {path} is damaged: the checksum of its content does not match"
        )
    return torch.load(io.BytesIO(content), map_location="cpu", weights_only=False)


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether ``run_dir`` holds a checkpoint (current or previous), good or damaged."""
    return any(
        (Path(run_dir) / name).is_file() for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME)
    )


def load_checkpoint(run_dir: str | Path) -> dict[str, Any]:
    """The state saved by :func:`save_checkpoint` in ``run_dir``; the previous checkpoint when the
    current one is damaged (with a warning naming it).

    Raises:
        FileNotFoundError: ``run_dir`` holds no checkpoint (the message names the path).
        CheckpointError: every checkpoint present is damaged (the message names each file).
    """
    paths = [Path(run_dir) / name for name in (CHECKPOINT_NAME, PREVIOUS_CHECKPOINT_NAME)]
    present = [path for path in paths if path.is_file()]
    if not present:
        raise FileNotFoundError(
            f"no checkpoint at {paths[0]}; was the run started with this directory as out_dir?"
        )
    errors = []
    for path in present:
        try:
            state = read_checkpoint_file(path)
        except CheckpointError as error:
            errors.append(str(error))
            continue
        if errors:
            logger.warning(
                "%s; resuming from the previous checkpoint %s (step %s)",
                errors[0],
                path,
                state["step"],
            )
        return state
    raise CheckpointError("; ".join(errors) + f"; delete {run_dir} and start the run again")
