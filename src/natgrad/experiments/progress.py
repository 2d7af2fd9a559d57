"""Progress of a run: a tqdm bar on a terminal, plain log lines (one per evaluation) otherwise."""

from __future__ import annotations

import logging
import sys
from typing import Protocol, TextIO

from tqdm import tqdm

logger = logging.getLogger("natgrad.progress")


class Progress(Protocol):
    """What the runner reports progress to: a bar on a terminal, log lines otherwise."""

    def step(self, step: int, loss: float) -> None:
        """One optimizer step was taken."""

    def evaluated(self, step: int, metrics: dict[str, float], steps_per_second: float) -> None:
        """An evaluation finished."""

    def close(self) -> None:
        """The run ended."""


def _short(metrics: dict[str, float], key: str | None) -> str:
    return "" if key is None or key not in metrics else f"{key}={metrics[key]:.4g}"


class BarProgress:
    """tqdm bar: steps, loss, the headline metric and steps/s (tqdm's rate)."""

    def __init__(
        self, total: int | None, initial: int, label: str, metric_key: str | None, stream: TextIO
    ) -> None:
        self.metric_key = metric_key
        self.metric = ""
        self.bar = tqdm(
            total=total, initial=initial, desc=label, unit="step", file=stream, dynamic_ncols=True
        )

    def step(self, step: int, loss: float) -> None:
        """Advance the bar, showing the loss."""
        self.bar.update(step - self.bar.n)
        self.bar.set_postfix_str(f"loss={loss:.4g} {self.metric}".strip(), refresh=False)

    def evaluated(self, step: int, metrics: dict[str, float], steps_per_second: float) -> None:
        """Show the headline metric and the speed."""
        self.metric = _short(metrics, self.metric_key)

    def close(self) -> None:
        """Close the bar."""
        self.bar.close()


class LineProgress:
    """One ``logging`` line per evaluation: step, loss, the headline metric, steps/s."""

    def __init__(self, total: int | None, label: str, metric_key: str | None) -> None:
        self.total = total
        self.label = label
        self.metric_key = metric_key
        self.loss = float("nan")

    def step(self, step: int, loss: float) -> None:
        """Log a line every so often."""
        self.loss = loss

    def evaluated(self, step: int, metrics: dict[str, float], steps_per_second: float) -> None:
        """Log the evaluation."""
        of = f"/{self.total}" if self.total is not None else ""
        loss = f" loss={self.loss:.4g}" if step > 0 else ""
        logger.info(
            "%s step %d%s%s %s %.1f steps/s",
            self.label,
            step,
            of,
            loss,
            _short(metrics, self.metric_key),
            steps_per_second,
        )

    def close(self) -> None:
        """Nothing to close."""
        return None


def make_progress(
    total: int | None,
    initial: int,
    label: str,
    metric_key: str | None,
    stream: TextIO | None = None,
) -> Progress:
    """A bar when ``stream`` (default stderr) is a terminal, plain lines otherwise."""
    stream = sys.stderr if stream is None else stream
    if stream.isatty():
        return BarProgress(total, initial, label, metric_key, stream)
    return LineProgress(total, label, metric_key)
