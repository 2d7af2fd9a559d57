"""Summaries of a comparison: per optimizer, statistics over seeds of final/best errors and time to
target.

Definitions (all on evaluations of the full train/test sets, see
:mod:`natgrad.experiments.metrics`):

* *final* error: the value at the last evaluation (the end of the budget);
* *best* error: the minimum over evaluations;
* *time to target*: training seconds (evaluation excluded) at the first evaluation whose train
  error is <= the target; *steps to target* likewise. A seed that never reaches it counts as not
  reached; the median is over the seeds that did, and the table says how many did;
* the default target is the largest of the optimizers' median final train errors, i.e. the error
  every optimizer reaches on its median seed, so the time-to-target column ranks every optimizer.

Each statistic is the median over seeds with its minimum and maximum; the number of seeds whose run
diverged is counted (the table shows it next to the seeds).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from natgrad.report.curves import RunCurves


@dataclass(frozen=True)
class Spread:
    """Median and range over seeds (``n`` values; NaN when ``n`` is 0)."""

    median: float
    low: float
    high: float
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Spread":
        """The median, minimum and maximum of ``values``."""
        finite = [v for v in values if math.isfinite(v)]
        if not finite:
            return cls(math.nan, math.nan, math.nan, 0)
        return cls(float(np.median(finite)), min(finite), max(finite), len(finite))


@dataclass(frozen=True)
class OptimizerSummary:
    """One row of a comparison table."""

    label: str
    seeds: int
    final_train: Spread
    final_test: Spread
    best_train: Spread
    best_test: Spread
    time_to_target: Spread
    steps_to_target: Spread
    steps: Spread
    time: Spread
    extra_final: dict[str, Spread]
    diverged: int = 0


def first_reach(curves: RunCurves, key: str, target: float) -> tuple[float, float]:
    """(training seconds, steps) at the first evaluation with ``metrics[key] <= target``; NaN if
    never.
    """
    hits = np.flatnonzero(curves.metrics[key] <= target)
    if hits.size == 0:
        return math.nan, math.nan
    return float(curves.times[hits[0]]), float(curves.steps[hits[0]])


def default_target(runs: Mapping[str, Sequence[RunCurves]], metric: str) -> float:
    """The largest median final train error over optimizers (see module docstring)."""
    medians = [
        Spread.of([float(c.metrics[f"train.{metric}"][-1]) for c in curves]).median
        for curves in runs.values()
    ]
    finite = [m for m in medians if math.isfinite(m)]
    if not finite:
        raise ValueError(f"no finite final train.{metric} in any run; cannot choose a target error")
    return max(finite)


def summarise(
    label: str, curves: Sequence[RunCurves], metric: str, target: float, extra: Sequence[str] = ()
) -> OptimizerSummary:
    """The table row of one optimizer over its seeds; ``extra`` metric keys get their final
    value.
    """
    train_key, test_key = f"train.{metric}", f"test.{metric}"
    reach = [first_reach(c, train_key, target) for c in curves]
    return OptimizerSummary(
        label=label,
        seeds=len(curves),
        final_train=Spread.of([float(c.metrics[train_key][-1]) for c in curves]),
        final_test=Spread.of([float(c.metrics[test_key][-1]) for c in curves]),
        best_train=Spread.of([float(np.nanmin(c.metrics[train_key])) for c in curves]),
        best_test=Spread.of([float(np.nanmin(c.metrics[test_key])) for c in curves]),
        time_to_target=Spread.of([t for t, _ in reach]),
        steps_to_target=Spread.of([s for _, s in reach]),
        steps=Spread.of([float(c.total_steps) for c in curves]),
        time=Spread.of([c.total_time for c in curves]),
        extra_final={
            k: Spread.of([float(c.metrics[k][-1]) for c in curves if k in c.metrics]) for k in extra
        },
        diverged=sum(c.status == "diverged" for c in curves),
    )
