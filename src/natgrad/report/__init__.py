"""Reports: learning curves from run logs, summary statistics over seeds, Markdown tables,
figures.
"""

from natgrad.report.comparison import Report, write_suite_report
from natgrad.report.curves import RunCurves, load_curves
from natgrad.report.plots import plot_comparison
from natgrad.report.summary import OptimizerSummary, Spread, default_target, summarise
from natgrad.report.tables import comparison_table

__all__ = [
    "OptimizerSummary",
    "Report",
    "RunCurves",
    "Spread",
    "comparison_table",
    "default_target",
    "load_curves",
    "plot_comparison",
    "summarise",
    "write_suite_report",
]
