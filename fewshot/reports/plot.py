"""Plot accuracy against shots, one line per normalization layer, with 95% CI error bars (PNG, matplotlib Agg).

Input is the frame of :func:`fewshot.reports.table.runs_table`. One panel per (dataset, protocol, way, queries per
class: with transductive statistics the query count changes the accuracy, so it is a different protocol); within
a panel one line per (norm, and, when they vary, learner, backbone, policy). Rows without an accuracy are
skipped. When several runs give the same point, the most recent run (largest run-directory name, which starts
with the UTC time) is drawn and a warning names the others.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["plot_accuracy_vs_shots", "series_color"]


def series_color(i: int) -> tuple[float, float, float, float]:
    """The i-th of 20 distinct colours (tab10, then tab10's lighter partners): no two series share one below 20."""
    cmap = plt.get_cmap("tab20")
    return cmap(2 * i % 20 + (i // 10) % 2)


_PANEL = ["dataset", "protocol", "way", "query"]
_SERIES = ["norm", "learner", "backbone", "policy"]


def plot_accuracy_vs_shots(frame: pd.DataFrame, path: str | Path, *, overwrite: bool = False) -> Path:
    """Write a PNG of mean accuracy (%) against shots per normalization layer; error bars are the 95% CI.

    Args:
        frame: a results frame with columns ``dataset, protocol, way, query, shot, norm, learner, backbone,
            policy, mean, ci95, run`` (means and CIs in percent).
        path: the PNG file to write (parent folders are created).
        overwrite: replace an existing file (else FileExistsError).

    Returns:
        The written path.

    Raises:
        ValueError: no row has an accuracy to plot.
        FileExistsError: ``path`` exists and ``overwrite`` is false.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"refusing to overwrite {str(path)!r}; choose another --plot file or delete it")
    data = frame.dropna(subset=["mean", "shot"]).copy()
    if data.empty:
        raise ValueError("no evaluated runs to plot: every row lacks an accuracy; run `run_episode.py eval` first")
    data = data.sort_values("run")
    key = _PANEL + _SERIES + ["shot"]
    dup = data[data.duplicated(key, keep="last")]
    if not dup.empty:
        warnings.warn(
            f"{len(dup)} point(s) are given by more than one run; plotting the most recent run of each "
            f"(ignored: {', '.join(sorted(set(dup['run'].astype(str))))})",
            stacklevel=2,
        )
        data = data.drop_duplicates(key, keep="last")
    varying = [c for c in _SERIES[1:] if data[c].nunique(dropna=False) > 1]
    series_keys = ["norm", *varying]
    labels = sorted({" / ".join(str(v) for v in key) for key, _ in data.groupby(series_keys, dropna=False)})
    colors = {label: series_color(i) for i, label in enumerate(labels)}  # one colour per series in every panel
    panels = list(data.groupby(_PANEL, sort=True, dropna=False))
    # One legend below all panels (colours are shared across panels), never over a point.
    fig, axes = plt.subplots(
        1, len(panels), figsize=(4.8 * len(panels), 3.8 + 0.25 * len(labels)), squeeze=False, layout="constrained"
    )
    handles = {}
    for ax, ((dataset, protocol, way, query), panel) in zip(axes[0], panels, strict=True):
        for series, points in panel.groupby(series_keys, sort=True, dropna=False):
            label = " / ".join(str(v) for v in series)
            points = points.sort_values("shot")
            handles[label] = ax.errorbar(
                points["shot"].astype(float), points["mean"], yerr=points["ci95"].fillna(0.0),
                marker="o", capsize=3, label=label, color=colors[label],
            )  # fmt: skip
        shots = sorted(int(s) for s in panel["shot"].unique())
        ax.set_xticks(shots)
        ax.set_xlabel("shots per class (K)")
        ax.set_ylabel("accuracy (%), mean ± 95% CI")
        ax.set_title(f"{dataset} ({protocol}), {way}-way, {query} {'query' if query == 1 else 'queries'}/class")
        ax.grid(alpha=0.3)
    title = "norm" + "".join(f" / {c}" for c in varying)
    fig.legend([handles[k] for k in labels], labels, title=title, loc="outside lower center", fontsize="small")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    try:
        fig.savefig(tmp, dpi=120)
        tmp.replace(path)
    finally:
        plt.close(fig)
        tmp.unlink(missing_ok=True)
    return path
