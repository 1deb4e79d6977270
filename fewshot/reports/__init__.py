"""Results reports: tables of runs (CSV, Markdown, LaTeX) and accuracy-vs-shots plots."""

from fewshot.reports.plot import plot_accuracy_vs_shots as plot_accuracy_vs_shots
from fewshot.reports.table import COLUMNS as COLUMNS
from fewshot.reports.table import FORMATS as FORMATS
from fewshot.reports.table import format_table as format_table
from fewshot.reports.table import load_run_info as load_run_info
from fewshot.reports.table import runs_table as runs_table

__all__ = ["COLUMNS", "FORMATS", "format_table", "load_run_info", "plot_accuracy_vs_shots", "runs_table"]
