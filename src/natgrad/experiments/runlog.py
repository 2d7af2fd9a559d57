"""The JSONL run log: one JSON object per line, appended and flushed as the run goes.

A checkpoint stores the log's byte length at the time it was written; resuming truncates the log to
that length, so lines written after the checkpoint by a killed process are dropped and rewritten by
the resumed run (the log of a resumed run equals that of an uninterrupted one, timings aside).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

LOG_NAME = "log.jsonl"


class RunLogError(ValueError):
    """The log of a run is missing or shorter than its checkpoint recorded; the message names it."""


class RunLog:
    """Append-only JSONL writer at ``path``; ``truncate_to`` cuts it back to a checkpointed
    length.
    """

    def __init__(self, path: str | Path, truncate_to: int | None = None) -> None:
        """Open the log for appending, first cut back to ``truncate_to`` bytes when given.

        Raises:
            RunLogError: the log holds fewer than ``truncate_to`` bytes (missing, truncated or
                replaced).
        """
        self.path = Path(path)
        if truncate_to is not None:
            size = self.path.stat().st_size if self.path.is_file() else None
            if truncate_to > (size or 0):
                found = "is missing" if size is None else f"holds {size} bytes"
                raise RunLogError(
                    f"{self.path} {found}, but the checkpoint recorded {truncate_to} bytes of log; "
                    "restore the log or start the run again"
                )
            with self.path.open("a+b") as handle:
                handle.truncate(truncate_to)
        self._handle = self.path.open("a", encoding="utf-8")

    def write(self, record: dict[str, Any]) -> None:
        """Append ``record`` as one line and flush it to the OS."""
        self._handle.write(json.dumps(record, sort_keys=True) + "\n")
        self._handle.flush()

    def position(self) -> int:
        """Byte length of the log, after syncing it to disk (called before each checkpoint)."""
        self._handle.flush()
        os.fsync(self._handle.fileno())
        return self.path.stat().st_size

    def close(self) -> None:
        """Close the file."""
        self._handle.close()


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """All records of a JSONL log (a directory means its ``log.jsonl``); a torn last line is
    ignored.
    """
    path = Path(path)
    if path.is_dir():
        path = path / LOG_NAME
    records = []
    with path.open(encoding="utf-8") as handle:
        for line in handle:
            if not line.endswith("\n"):
                break
            records.append(json.loads(line))
    return records
