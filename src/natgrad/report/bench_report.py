"""The bench report: Markdown and HTML from the cell records of a :mod:`natgrad.experiments.bench` grid.

Per problem (dataset x model):

* the learning-rate grids of the baselines, with the variant kept for each label (lowest median
  final train error over seeds; a diverged seed counts as +inf);
* the table of :func:`natgrad.report.tables.comparison_table` for the kept variants: median over
  seeds [min-max] of final and best train/test error, time and steps to the target train error;
* speed-ups to the target measured in the same grid: ``T_baseline / T_method`` with ``T`` the
  median training seconds (and steps) to the target, against the kept Adam and SGD-momentum
  variants. When the baseline never reaches the target, the ratio is a lower bound
  ``> budget / T_method`` using the baseline's median training time;
* for autoencoders, the errors the papers report on the same problem (:mod:`natgrad.report.papers`);
* figures: error vs. training time and vs. steps (:func:`natgrad.report.plots.plot_comparison`),
  and the damping / step-size traces of the natural-gradient methods (:mod:`natgrad.report.traces`).

The target is the problem's ``target`` from the bench file, else the largest median final train
error of the kept variants (:func:`natgrad.report.summary.default_target`), so every kept method's
median seed reaches it.
"""
from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from natgrad.experiments.bench import CELLS_DIR
from natgrad.experiments.checkpoint import atomic_write_text
from natgrad.report.comparison import Report
from natgrad.report.curves import RunCurves
from natgrad.report.html import markdown_to_html
from natgrad.report.papers import K_FAC_NOTE, papers_table
from natgrad.report.plots import plot_comparison
from natgrad.report.summary import OptimizerSummary, Spread, default_target, summarise
from natgrad.report.tables import (
    METRIC_NAMES,
    comparison_table,
    format_number,
    format_spread,
)
from natgrad.report.traces import plot_traces, traced

REPORT_MD, REPORT_HTML, FIGURES_DIR = "report.md", "report.html", "figures"
BASELINES = ("adam", "sgd")
_DATASET_ORDER = ("mnist", "curves", "faces", "synthetic")
_BASELINE_NAMES = {"adam": "Adam", "sgd": "SGD-momentum"}


def load_cells(runs_dir: str | Path) -> list[dict[str, Any]]:
    """Every cell record under ``runs_dir/cells``.

    Raises:
        FileNotFoundError: there is none (the message says what was searched).
    """
    paths = sorted((Path(runs_dir) / CELLS_DIR).glob("*/*/seed-*.json"))
    if not paths:
        raise FileNotFoundError(f"no cell results in {Path(runs_dir) / CELLS_DIR}; run `natgrad bench CONFIG.toml --out "
                                f"{runs_dir}` first")
    return [json.loads(path.read_text()) for path in paths]


def cell_curves(cell: Mapping[str, Any]) -> RunCurves:
    """A cell's evaluations as the :class:`RunCurves` the summary and plot code read."""
    curve = cell["curve"]
    keys = sorted({k for e in curve for k in e["metrics"]})
    metrics = {k: np.array([e["metrics"].get(k, np.nan) for e in curve], dtype=float) for k in keys}
    run_dir = Path(cell["config"]["out_dir"])
    return RunCurves(run_dir, cell["config"], np.array([e["step"] for e in curve]), np.array([e["time"] for e in curve]),
                     metrics, int(cell["steps"]), float(cell["train_time"]))


@dataclass
class ProblemResults:
    """The cells of one problem, by label and variant (each a list over seeds)."""

    problem: str
    dataset: str
    model: str
    metric: str
    variants: dict[str, dict[str, list[dict[str, Any]]]]  # label -> variant -> cells

    def optimizer_name(self, label: str) -> str:
        first = next(iter(self.variants[label].values()))[0]
        return first["config"]["optimizer"]["name"]


def _label_key(cells: Sequence[Mapping[str, Any]], label: str) -> tuple[int, str]:
    name = cells[0]["config"]["optimizer"]["name"]
    return (BASELINES[::-1].index(name) if name in BASELINES else len(BASELINES), label)


def group_cells(cells: Sequence[Mapping[str, Any]]) -> list[ProblemResults]:
    """Cells grouped by problem (paper datasets first), labels ordered SGD, Adam, then the others."""
    problems: dict[str, ProblemResults] = {}
    for cell in cells:
        results = problems.setdefault(cell["problem"], ProblemResults(cell["problem"], cell["dataset"], cell["model"],
                                                                      cell["metric"], {}))
        results.variants.setdefault(cell["label"], {}).setdefault(cell["variant"], []).append(dict(cell))
    for results in problems.values():
        order = sorted(results.variants, key=lambda lb: _label_key(next(iter(results.variants[lb].values())), lb))
        results.variants = {label: dict(sorted(results.variants[label].items())) for label in order}
        for variants in results.variants.values():
            for seeds in variants.values():
                seeds.sort(key=lambda c: c["seed"])

    def key(r: ProblemResults) -> tuple[int, str]:
        return (_DATASET_ORDER.index(r.dataset) if r.dataset in _DATASET_ORDER else len(_DATASET_ORDER), r.problem)

    return sorted(problems.values(), key=key)


def _final_train(cell: Mapping[str, Any]) -> float:
    value = cell["final"]["train"]
    return math.inf if value is None or cell["status"] == "diverged" else float(value)


def select_variant(variants: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """The variant with the lowest median final train error over its seeds (diverged = +inf)."""
    return min(variants, key=lambda v: (statistics.median(_final_train(c) for c in variants[v]), v))


def _grid_table(results: ProblemResults, kept: Mapping[str, str]) -> str:
    lines = ["| label | variant | grid | final train error | diverged seeds | kept |", "|---|---|---|---:|---:|---|"]
    for label, variants in results.variants.items():
        if len(variants) < 2:
            continue
        for variant, cells in variants.items():
            grid = ", ".join(f"{k} = {v:g}" for k, v in cells[0]["grid"].items())
            spread = Spread.of([_final_train(c) for c in cells])
            diverged = sum(c["status"] == "diverged" for c in cells)
            lines.append(f"| {label} | {variant} | {grid} | {format_spread(spread)} | {diverged}/{len(cells)} | "
                         f"{'yes' if kept[label] == variant else ''} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def speedup(baseline: OptimizerSummary, method: OptimizerSummary, field: str) -> str:
    """``T_baseline / T_method`` to the target on ``field`` ('time' or 'steps'), formatted (see module docstring)."""
    base, mine = getattr(baseline, f"{field}_to_target"), getattr(method, f"{field}_to_target")
    if mine.n == 0 or mine.median <= 0:
        return "—" if mine.n == 0 else "∞"
    if base.n == 0:
        budget = getattr(baseline, "time" if field == "time" else "steps").median
        return f"> {budget / mine.median:.2g}×"
    return f"{base.median / mine.median:.2g}×"


def _speedup_table(rows: Sequence[OptimizerSummary], baselines: Mapping[str, OptimizerSummary]) -> str:
    if not baselines:
        return ""
    header = ["optimizer", "time to target (s)"]
    header += [f"vs {_BASELINE_NAMES[b]} ({unit})" for b in baselines for unit in ("time", "steps")]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    for row in rows:
        cells = [row.label, format_spread(row.time_to_target, row.seeds)]
        cells += [speedup(base, row, unit) for base in baselines.values() for unit in ("time", "steps")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


@dataclass
class ProblemSummary:
    """What the headline table needs from one problem."""

    problem: str
    target: float
    rows: list[OptimizerSummary]
    baselines: dict[str, OptimizerSummary]


def summarise_problem(results: ProblemResults, kept: Mapping[str, str]) -> ProblemSummary:
    """Rows of the kept variants (labelled by variant) and the Adam / SGD baselines among them."""
    runs = {kept[label]: [cell_curves(c) for c in variants[kept[label]]] for label, variants in results.variants.items()}
    configured = [c["target"] for vs in results.variants.values() for cs in vs.values() for c in cs if c["target"]]
    target = float(configured[0]) if configured else default_target(runs, results.metric)
    extra = ["test.iwae_ll"] if any("test.iwae_ll" in c.metrics for cs in runs.values() for c in cs) else []
    rows = [summarise(variant, curves, results.metric, target, extra) for variant, curves in runs.items()]
    by_variant = {row.label: row for row in rows}
    baselines = {}
    for name in BASELINES:
        labels = [lb for lb in results.variants if results.optimizer_name(lb) == name]
        if labels:
            baselines[name] = by_variant[kept[labels[0]]]
    return ProblemSummary(results.problem, target, rows, baselines)


def _describe(results: ProblemResults) -> str:
    cell = next(iter(next(iter(results.variants.values())).values()))[0]
    config, budget = cell["config"], cell["budget"]
    data, model = config["data"], config["model"]
    limits = " and ".join(x for x in (f"{budget['steps']} steps" if budget["steps"] else "",
                                       f"{budget['seconds']:g} s of training" if budget["seconds"] else "") if x)
    batches = ", ".join(f"{label} {cs[0]['config']['batch_size']}" for label, vs in results.variants.items()
                        for cs in list(vs.values())[:1])
    seeds = sorted({c["seed"] for vs in results.variants.values() for cs in vs.values() for c in cs})
    machine = cell["machine"]
    arch = model["sizes"] or model["problem"] or data["dataset"]
    return (f"{model['kind']} ({arch}) on {data['dataset']} (train {data['train_size'] or 'all'}, test "
            f"{data['test_size'] or 'all'} examples); budget {limits}, whichever ends first; batch sizes: {batches}; "
            f"evaluation every {config['eval']['every']} steps; seeds {seeds}; L2 eta "
            f"{config['optimizer']['l2']:g}. Machine: {machine['cpu']}, {machine['cores']} cores, torch "
            f"{machine['torch']} ({machine['device']}), {machine['threads']} thread(s) per run")


def _papers_block(results: ProblemResults) -> str:
    table = papers_table(results.dataset) if results.model == "autoencoder" else ""
    if not table:
        return ""
    regen = (" natgrad's CURVES and FACES are regenerated by the published recipe (not the original files)."
             if results.dataset in ("curves", "faces") else "")
    return (f"**Reported by the papers** (full data sets, long GPU/CPU runs; a reference point, not a like-for-like "
            f"comparison with the short budgets above).{regen}\n\n{table}\n{K_FAC_NOTE}\n\n")


def problem_section(results: ProblemResults, out_dir: Path) -> tuple[str, ProblemSummary]:
    """Markdown of one problem (figures written under ``out_dir/figures``) and its summary."""
    kept = {label: select_variant(variants) for label, variants in results.variants.items()}
    summary = summarise_problem(results, kept)
    runs = {kept[label]: [cell_curves(c) for c in variants[kept[label]]] for label, variants in results.variants.items()}
    metric_label = METRIC_NAMES[results.metric]
    figures = out_dir / FIGURES_DIR
    curves = plot_comparison(runs, results.metric, metric_label, results.problem, figures / f"{results.problem}-curves",
                             summary.target)
    text = [f"## {results.problem}\n", f"{_describe(results)}.\n"]
    grid = _grid_table(results, kept)
    if grid:
        text.append(f"Learning-rate grids (the kept variant of each label is used below):\n\n{grid}")
    text.append(f"Metric: {metric_label}; median over seeds [min–max]. Target train error "
                f"{format_number(summary.target)}; times are training seconds (evaluation excluded).\n\n"
                f"{comparison_table(summary.rows)}")
    speedups = _speedup_table(summary.rows, summary.baselines)
    if speedups:
        text.append(f"Speed-up to the target (baseline's median time or steps / the method's):\n\n{speedups}")
    text.append(_papers_block(results))
    text.append(f"![{results.problem}: error vs. time and steps]({curves[0].relative_to(out_dir)}) "
                f"([PDF]({curves[1].relative_to(out_dir)}))\n")
    cells = {kept[label]: variants[kept[label]] for label, variants in results.variants.items()}
    natural = {variant: cs for variant, cs in cells.items() if traced(cs)}
    if natural:
        colors = _colors(list(runs))
        traces = plot_traces(natural, colors, results.problem, figures / f"{results.problem}-traces")
        text.append(f"\n![{results.problem}: damping and step size]({traces[0].relative_to(out_dir)}) "
                    f"([PDF]({traces[1].relative_to(out_dir)}))\n")
    return "\n".join(text), summary


def _colors(labels: Sequence[str]) -> dict[str, str]:
    """The colours :func:`plot_comparison` gives ``labels`` (its default cycle, in order)."""
    import matplotlib.pyplot as plt

    cycle = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    return {label: cycle[i % len(cycle)] for i, label in enumerate(labels)}


def headline_table(summaries: Sequence[ProblemSummary]) -> str:
    """One row per (problem, non-baseline method): final train error and speed-ups to the target."""
    lines = ["| problem | method | final train error | vs Adam (time) | vs SGD-momentum (time) |",
             "|---|---|---:|---:|---:|"]
    for s in summaries:
        baseline_labels = {row.label for row in s.baselines.values()}
        for row in s.rows:
            if row.label in baseline_labels:
                continue
            cells = [speedup(s.baselines[b], row, "time") if b in s.baselines else "—" for b in BASELINES]
            lines.append(f"| {s.problem} | {row.label} | {format_spread(row.final_train)} | {' | '.join(cells)} |")
    return "\n".join(lines) + "\n" if len(lines) > 2 else ""


def write_bench_report(runs_dir: str | Path, out_dir: str | Path | None = None, title: str | None = None) -> Report:
    """Write ``report.md``, ``report.html`` and ``figures/`` for the grid in ``runs_dir`` (into ``out_dir``)."""
    runs_dir = Path(runs_dir)
    out = Path(out_dir) if out_dir is not None else runs_dir
    out.mkdir(parents=True, exist_ok=True)
    sections, summaries = [], []
    for results in group_cells(load_cells(runs_dir)):
        section, summary = problem_section(results, out)
        sections.append(section)
        summaries.append(summary)
    title = title or f"natgrad benchmark: {runs_dir.name}"
    headline = headline_table(summaries)
    intro = (f"# {title}\n\nEvery method ran under the same budget, seeds and data (see each problem). "
             "Speed-ups compare training seconds to the problem's target train error against the best "
             "learning rate of Adam and SGD-momentum in the same grid.\n\n")
    if headline:
        intro += f"## Headline\n\n{headline}\n"
    markdown = intro + "\n".join(sections)
    atomic_write_text(out / REPORT_MD, markdown)
    atomic_write_text(out / REPORT_HTML, markdown_to_html(markdown, title))
    return Report(out / REPORT_MD, markdown)
