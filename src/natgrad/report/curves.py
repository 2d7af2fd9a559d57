"""Learning curves read back from run directories (``config.json`` + ``log.jsonl`` +
``result.json``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from natgrad.experiments.runlog import read_log


@dataclass(frozen=True)
class RunCurves:
    """The evaluations of one run as arrays aligned with ``steps``.

    Attributes:
        run_dir: where the run lives.
        config: the resolved run config (a plain dict).
        steps: step of each evaluation, shape (E,).
        times: training seconds at each evaluation (evaluation time excluded), shape (E,).
        metrics: metric key (e.g. ``"train.reconstruction_error"``) -> values, shape (E,).
        total_steps, total_time: where the run ended (from its last step record).
        status: the run's ``result.json`` status ('completed', 'diverged', 'interrupted'), or
            'unfinished' without a readable one.
    """

    run_dir: Path
    config: dict[str, Any]
    steps: np.ndarray
    times: np.ndarray
    metrics: dict[str, np.ndarray]
    total_steps: int
    total_time: float
    status: str = "unfinished"


def _status(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / "result.json").read_text())["status"])
    except (OSError, ValueError, KeyError, TypeError):
        return "unfinished"


def load_curves(run_dir: str | Path) -> RunCurves:
    """Read one run directory.

    Raises:
        FileNotFoundError: the directory has no config or no log.
        ValueError: the log has no evaluation.
    """
    run_dir = Path(run_dir)
    config = json.loads((run_dir / "config.json").read_text())
    records = read_log(run_dir)
    evals = [r for r in records if r["kind"] == "eval"]
    if not evals:
        raise ValueError(
            f"{run_dir / 'log.jsonl'} has no evaluation record; the run ended before its first one"
        )
    keys = sorted({k for r in evals for k in r["metrics"]})
    metrics = {k: np.array([r["metrics"].get(k, np.nan) for r in evals], dtype=float) for k in keys}
    last = records[-1]
    return RunCurves(
        run_dir,
        config,
        np.array([r["step"] for r in evals]),
        np.array([r["time"] for r in evals]),
        metrics,
        int(last["step"]),
        float(last["time"]),
        _status(run_dir),
    )
