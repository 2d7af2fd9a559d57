"""Learning-curve figures: error vs. training time and vs. steps, one colour per optimizer.

Each optimizer's line is the median over seeds, the shaded band spans min to max over seeds; the
train error is drawn solid, the test error dashed. Over steps, seeds share their evaluation steps;
over time, each seed's curve is interpolated (in log space) onto a common grid that stops at the
shortest seed. The error (y) axis is always logarithmic, labelled in plain numbers at 1-2-5 per
decade, or at every integer mantissa (50, 60, ...) with the limits widened to the enclosing ticks
when the values span too little for three 1-2-5 ticks; only an error that is not positive (a
Gaussian -ELBO can be negative) keeps a linear axis. Figures are written as PNG (200 dpi) and PDF
with the non-interactive Agg backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402
from matplotlib.ticker import FormatStrFormatter, LogLocator, NullFormatter  # noqa: E402

from natgrad.report.curves import RunCurves  # noqa: E402

STYLE = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.5,
    "lines.linewidth": 1.6,
    "savefig.bbox": "tight",
}


def save_figure(fig, out_stem: Path) -> list[Path]:
    """Lay out ``fig`` and write it as ``out_stem.png`` (200 dpi) and ``out_stem.pdf``; close it."""
    fig.tight_layout()
    paths = [out_stem.with_suffix(".png"), out_stem.with_suffix(".pdf")]
    fig.savefig(paths[0], dpi=200)
    fig.savefig(paths[1])
    plt.close(fig)
    return paths


def _band_over_steps(curves: Sequence[RunCurves], key: str) -> tuple[np.ndarray, np.ndarray]:
    length = min(len(c.steps) for c in curves)
    return curves[0].steps[:length], np.stack([c.metrics[key][:length] for c in curves])


def _band_over_time(
    curves: Sequence[RunCurves], key: str, points: int = 200
) -> tuple[np.ndarray, np.ndarray]:
    end = min(float(c.times[-1]) for c in curves)
    grid = np.linspace(0.0, end, points)
    values = [
        np.exp(np.interp(grid, c.times, np.log(np.maximum(c.metrics[key], 1e-300)))) for c in curves
    ]
    return grid, np.stack(values)


def _draw(ax, x: np.ndarray, values: np.ndarray, color: str, linestyle: str) -> None:
    with np.errstate(all="ignore"):
        ax.plot(x, np.nanmedian(values, axis=0), color=color, linestyle=linestyle)
        if values.shape[0] > 1:
            ax.fill_between(
                x,
                np.nanmin(values, axis=0),
                np.nanmax(values, axis=0),
                color=color,
                alpha=0.18,
                linewidth=0,
            )


def _ticks_within(lo: float, hi: float, subs: Sequence[float]) -> int:
    """How many ticks ``m * 10^e`` (``m`` in ``subs``) lie in ``[lo, hi]``, for ``0 < lo <= hi``."""
    decades = range(int(np.floor(np.log10(lo))), int(np.floor(np.log10(hi))) + 1)
    return sum(lo <= m * 10.0**e <= hi for e in decades for m in subs)


def _enclosing_ticks(lo: float, hi: float) -> tuple[float, float]:
    """The largest integer-mantissa tick ``<= lo`` and the smallest ``>= hi`` (52, 58 -> 50, 60)."""
    lo_unit, hi_unit = 10.0 ** np.floor(np.log10(lo)), 10.0 ** np.floor(np.log10(hi))
    return float(np.floor(lo / lo_unit) * lo_unit), float(np.ceil(hi / hi_unit) * hi_unit)


def format_error_axis(ax, values: np.ndarray) -> bool:
    """Make ``ax``'s y axis logarithmic and readable for the errors ``values``; True if it is log.

    Ticks are labelled ``%g`` at 1-2-5 per decade; when fewer than three of those fall within the
    values, every integer mantissa is labelled and the limits widen to the enclosing ticks. Values
    that are not all positive (or none finite) leave the axis linear.
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0 or values.min() <= 0:
        return False
    lo, hi = float(values.min()), float(values.max())
    ax.set_yscale("log")
    subs = (1.0, 2.0, 5.0)
    if _ticks_within(lo, hi, subs) < 3:
        subs = tuple(float(m) for m in range(1, 10))
        ax.set_ylim(*_enclosing_ticks(lo, hi))
    ax.yaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.yaxis.set_major_formatter(FormatStrFormatter("%g"))
    ax.yaxis.set_minor_formatter(NullFormatter())
    return True


def plot_comparison(
    runs: Mapping[str, Sequence[RunCurves]],
    metric: str,
    metric_label: str,
    title: str,
    out_stem: str | Path,
    target: float | None = None,
) -> list[Path]:
    """Two panels (vs. training time, vs. steps) for one comparison; returns the PNG and PDF paths.

    ``runs`` maps an optimizer label to its runs (one per seed); ``metric`` is the key without the
    split (``"reconstruction_error"``), ``metric_label`` the y-axis label with its unit.
    """
    out_stem = Path(out_stem)
    out_stem.parent.mkdir(parents=True, exist_ok=True)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    splits = [("train", "-"), ("test", "--")]
    with plt.rc_context(STYLE):
        fig, axes = plt.subplots(1, 2, figsize=(7.2, 3.0), sharey=True)
        for i, (label, curves) in enumerate(runs.items()):
            color = colors[i % len(colors)]
            for split, style in splits:
                key = f"{split}.{metric}"
                _draw(axes[0], *_band_over_time(curves, key), color, style)
                _draw(axes[1], *_band_over_steps(curves, key), color, style)
        values = [c.metrics[f"{s}.{metric}"] for cs in runs.values() for c in cs for s, _ in splits]
        for ax, xlabel in zip(axes, ("training time (s, evaluation excluded)", "optimizer steps")):
            ax.set_xlabel(xlabel)
            format_error_axis(
                ax, np.concatenate(values + ([[target]] if target is not None else []))
            )
            if target is not None:
                ax.axhline(target, color="0.4", linewidth=0.8, linestyle=":")
        axes[0].set_ylabel(metric_label)
        handles = [
            Line2D([], [], color=colors[i % len(colors)], label=label)
            for i, label in enumerate(runs)
        ]
        handles += [
            Line2D([], [], color="0.3", linestyle=style, label=f"{split} set")
            for split, style in splits
        ]
        if target is not None:
            handles.append(
                Line2D([], [], color="0.4", linestyle=":", linewidth=0.8, label="target")
            )
        n_seeds = max(len(c) for c in runs.values())
        band = f"; band: min–max over {n_seeds} seeds" if n_seeds > 1 else ""
        fig.suptitle(f"{title} (median{band})", fontsize=10)
        fig.legend(handles=handles, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
        return save_figure(fig, out_stem)
