"""Training curves of runs side by side: training loss and validation accuracy against training time (PNG).

Reads each run's ``train_log.csv`` (columns ``episode, loss, acc, lr, elapsed_s, val_acc``; ``elapsed_s`` is the
training time including validation, summed over resumed sessions) and ``config.yaml``. Two panels: the query loss
of the training episodes (a centred rolling mean over ``smooth`` log rows, the raw rows faint behind it) and the
accuracy on the fixed validation episodes, both against training minutes or training episodes. This is how
runs with equal wall-clock budgets but different step costs (SWBN against BN) are compared fairly.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fewshot.errors import DataError  # noqa: E402
from fewshot.registry import option_label  # noqa: E402
from fewshot.reports.table import load_run_info  # noqa: E402

__all__ = ["X_AXES", "plot_training_curves", "read_train_log", "run_curve_label"]

#: x-axis choices: column of ``train_log.csv`` (after conversion) and its axis title.
X_AXES = {
    "minutes": ("minutes", "training time (min, validation included)"),
    "episodes": ("episode", "training episodes (tasks; batches for a classifier)"),
}
_REQUIRED = ("episode", "loss", "elapsed_s", "val_acc")


def read_train_log(run_dir: str | Path) -> pd.DataFrame:
    """The ``train_log.csv`` of a run with an added ``minutes`` column (``elapsed_s / 60``).

    Raises:
        DataError: no ``train_log.csv``, or it lacks one of ``episode, loss, elapsed_s, val_acc`` or has no rows.
    """
    path = Path(run_dir) / "train_log.csv"
    if not path.is_file():
        raise DataError(
            f"{str(run_dir)!r} has no train_log.csv; pass run directories written by `run_episode.py train`"
        )
    log = pd.read_csv(path)
    missing = [c for c in _REQUIRED if c not in log.columns]
    if missing or log.empty:
        raise DataError(
            f"{str(path)!r} should have rows with columns {', '.join(_REQUIRED)}; got columns {list(log.columns)} "
            f"and {len(log)} rows (missing: {missing or 'none'}); was the run stopped before its first log row?"
        )
    log["minutes"] = log["elapsed_s"] / 60.0
    return log


def run_curve_label(run_dir: str | Path) -> str:
    """``learner/backbone/norm[options] (run name)``, e.g. ``maml/conv4_maml/swbn[shrinkage=0.1] (2026…-b02c99c)``."""
    cfg = load_run_info(run_dir)["config"]
    model, learner = cfg.get("model") or {}, cfg.get("learner") or {}
    norm = option_label(str(model.get("norm")), model.get("norm_kwargs") or {})
    return f"{learner.get('name')}/{model.get('backbone')}/{norm} ({Path(run_dir).name})"


def plot_training_curves(
    run_dirs: Sequence[str | Path],
    path: str | Path,
    *,
    x: str = "minutes",
    smooth: int = 10,
    overwrite: bool = False,
    description: str | None = None,
) -> Path:
    """Write a PNG with the training loss and validation accuracy of ``run_dirs`` against time or episodes.

    Args:
        run_dirs: run directories (each with ``config.yaml`` and ``train_log.csv``).
        path: the PNG file to write (parent folders are created).
        x: ``"minutes"`` (training time) or ``"episodes"`` (training episodes; tasks for MAML).
        smooth: rows of the centred rolling mean drawn over the raw training loss (``1``: no smoothing).
        overwrite: replace an existing file (else FileExistsError).
        description: stored in the PNG's ``Description`` text chunk (the CLI stores its command line there).

    Returns:
        The written path.

    Raises:
        ValueError: no runs, an unknown ``x``, or ``smooth < 1``.
        DataError: a run without a usable ``train_log.csv`` (see :func:`read_train_log`).
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if not run_dirs:
        raise ValueError("plot_training_curves needs at least one run directory")
    if x not in X_AXES:
        raise ValueError(f"x must be one of {', '.join(map(repr, X_AXES))}, got {x!r}")
    if isinstance(smooth, bool) or not isinstance(smooth, int) or smooth < 1:
        raise ValueError(f"smooth must be an int >= 1 (log rows of the rolling mean), got {smooth!r}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"refusing to overwrite {str(path)!r}; pass --force or choose another file")
    column, title = X_AXES[x]
    curves = [(run_curve_label(d), read_train_log(d)) for d in run_dirs]
    # The legend goes below both panels (never over a curve): one row per run.
    fig, (ax_loss, ax_val) = plt.subplots(1, 2, figsize=(11, 4 + 0.25 * len(curves)), layout="constrained")
    for i, (label, log) in enumerate(curves):
        color = f"C{i % 10}"
        ax_loss.plot(log[column], log["loss"], color=color, alpha=0.2, linewidth=0.8)
        rolled = log["loss"].rolling(smooth, center=True, min_periods=1).mean()
        ax_loss.plot(log[column], rolled, color=color, label=label)
        val = log.dropna(subset=["val_acc"])
        ax_val.plot(val[column], 100.0 * val["val_acc"], color=color, marker="o", markersize=3, label=label)
    ax_loss.set_ylabel(f"training query loss (rolling mean of {smooth} log rows)")
    ax_val.set_ylabel("validation accuracy (%)")
    for ax in (ax_loss, ax_val):
        ax.set_xlabel(title)
        ax.grid(alpha=0.3)
    fig.legend(*ax_val.get_legend_handles_labels(), loc="outside lower center", fontsize="x-small")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, metadata={"Description": description} if description else None)
    plt.close(fig)
    return path
