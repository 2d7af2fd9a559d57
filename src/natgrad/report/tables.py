"""Markdown tables of comparison summaries (median over seeds, [min-max] when there are several)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from natgrad.report.summary import OptimizerSummary, Spread

#: Human names of the metric keys, with units.
METRIC_NAMES = {
    "reconstruction_error": "reconstruction error (squared error per image)",
    "neg_elbo": "negative ELBO (nats per image)",
    "nll": "negative log-likelihood (nats per image)",
    "test.iwae_ll": "test -L_k (IWAE bound, nats per image)",
}
#: Metrics shown negated, so that every column is a loss in nats (lower is better): L_k is a
#: log-likelihood.
NEGATED = {"test.iwae_ll"}


def format_number(value: float) -> str:
    """Four significant digits, no exponent for ordinary magnitudes."""
    if not math.isfinite(value):
        return "—"
    return f"{value:.4g}" if abs(value) < 1e5 else f"{value:.3e}"


def format_spread(spread: Spread, seeds: int | None = None) -> str:
    """``median [min–max]``; with ``seeds`` given, also ``(reached/seeds)`` when some seeds
    missed.
    """
    if spread.n == 0:
        return "not reached" if seeds is not None else "—"
    text = format_number(spread.median)
    if spread.n > 1 and spread.low != spread.high:
        text += f" [{format_number(spread.low)}–{format_number(spread.high)}]"
    if seeds is not None and spread.n < seeds:
        text += f" ({spread.n}/{seeds})"
    return text


def displayed(key: str, spread: Spread) -> Spread:
    """``spread`` as the table shows metric ``key``: negated for the :data:`NEGATED`
    log-likelihoods.
    """
    if key not in NEGATED:
        return spread
    return Spread(-spread.median, -spread.high, -spread.low, spread.n)


def speedup(reference: OptimizerSummary, row: OptimizerSummary) -> float:
    """``reference``'s median time to target over ``row``'s (NaN when either never reaches it)."""
    return reference.time_to_target.median / row.time_to_target.median


def comparison_table(rows: Sequence[OptimizerSummary], reference: str | None = None) -> str:
    """The Markdown table of one comparison (one row per optimizer).

    With ``reference`` (a row's label), a column gives each optimizer's :func:`speedup` over it.
    """
    extras = sorted({k for row in rows for k in row.extra_final})
    by_label = {row.label: row for row in rows}
    header = [
        "optimizer",
        "seeds",
        "final train",
        "final test",
        "best train",
        "best test",
        "time to target (s)",
    ] + ([f"speed-up vs {reference}"] if reference in by_label else [])
    header += ["steps to target", "steps", "train time (s)"]
    header += [f"final {METRIC_NAMES.get(k, k)}" for k in extras]
    lines = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|",
    ]
    for row in rows:
        seeds = f"{row.seeds} ({row.diverged} diverged)" if row.diverged else str(row.seeds)
        cells = [
            row.label,
            seeds,
            format_spread(row.final_train),
            format_spread(row.final_test),
            format_spread(row.best_train),
            format_spread(row.best_test),
            format_spread(row.time_to_target, row.seeds),
        ]
        if reference in by_label:
            ratio = speedup(by_label[reference], row)
            cells.append(f"{format_number(ratio)}x" if math.isfinite(ratio) else "—")
        cells += [
            format_spread(row.steps_to_target, row.seeds),
            format_spread(row.steps),
            format_spread(row.time),
        ]
        cells += [
            format_spread(displayed(k, row.extra_final.get(k, Spread.of([])))) for k in extras
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
