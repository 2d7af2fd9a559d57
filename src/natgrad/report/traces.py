"""Traces of the natural-gradient methods' adaptive quantities over steps, from bench cell records.

One panel per quantity: the Levenberg-Marquardt damping lambda (Martens & Grosse 2015, section
6.5; Martens 2010, section 4.1), the step size alpha and the momentum mu chosen by the quadratic
model (section 7). Each line is the median over seeds, the band the min-max; steps whose value is
missing (e.g. a rejected step) are gaps. Written as PNG (200 dpi) and PDF in the style of
:mod:`natgrad.report.plots`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogFormatter  # noqa: E402

from natgrad.report.plots import STYLE, save_figure  # noqa: E402

#: trace field -> axis label; the panels drawn when some method records them.
TRACE_PANELS = {"damping": "damping λ", "alpha": "step size α", "mu": "momentum μ"}


def _column(cell: Mapping[str, Any], name: str, length: int) -> np.ndarray:
    values = cell["trace"].get(name) or []
    column = np.array([np.nan if v is None else float(v) for v in values[:length]], dtype=float)
    return np.pad(column, (0, length - column.size), constant_values=np.nan)


def traced(cells: Sequence[Mapping[str, Any]]) -> list[str]:
    """The :data:`TRACE_PANELS` fields any of ``cells`` recorded."""
    return [name for name in TRACE_PANELS if any(cell["trace"].get(name) for cell in cells)]


def plot_traces(
    runs: Mapping[str, Sequence[Mapping[str, Any]]],
    colors: Mapping[str, str],
    title: str,
    out_stem: str | Path,
) -> list[Path]:
    """One row of panels (damping, alpha, mu vs. steps) for the labels of ``runs`` that record them.

    ``runs`` maps a label to its cell records (one per seed); ``colors`` gives each label's colour
    (the same as in the learning-curve figure). Returns the PNG and PDF paths.

    Raises:
        ValueError: no run records any traced quantity.
    """
    panels = traced([cell for cells in runs.values() for cell in cells])
    if not panels:
        raise ValueError("no run records damping, alpha or mu; nothing to plot")
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(
            1, len(panels), figsize=(2.6 * len(panels) + 1.2, 2.6), squeeze=False
        )
        for ax, name in zip(axes[0], panels):
            for label, cells in runs.items():
                if not traced(cells):
                    continue
                length = min(len(cell["trace"]["step"]) for cell in cells)
                steps = np.asarray(cells[0]["trace"]["step"][:length])
                values = np.stack([_column(cell, name, length) for cell in cells])
                with np.errstate(all="ignore"), warnings.catch_warnings():
                    # all-NaN steps (rejected) are gaps
                    warnings.simplefilter("ignore", RuntimeWarning)
                    ax.plot(steps, np.nanmedian(values, axis=0), color=colors[label], label=label)
                    if values.shape[0] > 1:
                        ax.fill_between(
                            steps,
                            np.nanmin(values, axis=0),
                            np.nanmax(values, axis=0),
                            color=colors[label],
                            alpha=0.18,
                            linewidth=0,
                        )
            ax.set_xlabel("optimizer steps")
            ax.set_ylabel(TRACE_PANELS[name])
            if name == "damping":
                ax.set_yscale("log")
                ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
                # labels minors on short ranges
                ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False))
        handles, labels = axes[0][0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        fig.suptitle(
            f"{title}: adaptive damping and step size (median, band min–max over seeds)",
            fontsize=10,
        )
        return save_figure(fig, out_stem)
