"""The study's plots (PNG, matplotlib Agg): accuracy against K, difference to BN against K, W spectra.

Panels of the two K plots are one per (grid, way, policy); lines are cells (norm with options), one colour per
cell label in the whole figure; error
bars span the 95% intervals of the study table (``ci_low``..``ci_high``, ``diff_low``..``diff_high``: the two-level
bootstrap over seeds and episodes, not necessarily symmetric about the mean). The spectrum plot has a
panel per cell with whitening matrices: the largest (solid) and smallest (dashed) singular value of W per
network layer against training episodes, seeds averaged.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on servers; must precede pyplot
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from fewshot.reports.plot import series_color  # noqa: E402

__all__ = ["plot_accuracy_vs_k", "plot_diff_vs_k", "plot_w_spectra"]


_PANEL = ["grid", "way", "policy"]


def _panels(n: int) -> tuple[plt.Figure, list[plt.Axes]]:
    cols = min(3, max(1, n))
    rows = math.ceil(max(1, n) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.4 * rows), squeeze=False)
    return fig, list(axes.flat)


def _save(fig: plt.Figure, axes: list[plt.Axes], used: int, path: Path) -> Path:
    for ax in axes[used:]:
        ax.set_visible(False)
    handles, labels = [], []  # every line of every panel once (panels of several learners hold other cells)
    for ax in axes[:used]:
        for handle, label in zip(*ax.get_legend_handles_labels(), strict=True):
            if label not in labels:
                handles.append(handle)
                labels.append(label)
    if handles:
        fig.legend(handles, labels, loc="lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)
        fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(labels) // 4), 1, 1))
    else:
        fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _k_plot(
    table: pd.DataFrame, path: str | Path, value: str, bounds: tuple[str, str], ylabel: str, zero: bool
) -> Path:
    path = Path(path)
    data = table.dropna(subset=[value]) if not table.empty else table
    panels = list(data.groupby(_PANEL, sort=False)) if not data.empty else []
    fig, axes = _panels(len(panels))
    pairs = [] if data.empty else list(zip(data["cell"], data["norm"], strict=True))
    labels = dict.fromkeys(f"{norm} ({cell})" if norm != cell else norm for cell, norm in pairs)
    colors = {label: series_color(i) for i, label in enumerate(labels)}
    for ax, (key, group) in zip(axes, panels, strict=False):
        for (cell, norm), line in group.groupby(["cell", "norm"], sort=False):
            line = line.sort_values("shot")
            label = f"{norm} ({cell})" if norm != cell else norm
            low, high = (line[value] - line[bounds[0]]).fillna(0.0), (line[bounds[1]] - line[value]).fillna(0.0)
            ax.errorbar(line["shot"], line[value], yerr=[low.clip(lower=0), high.clip(lower=0)], marker="o", ms=3,
                        capsize=2, color=colors[label], label=label)  # fmt: skip
        if zero:
            ax.axhline(0.0, color="grey", lw=0.8)
        ax.set_xscale("log")
        shots = sorted(group["shot"].unique())
        ax.set_xticks(shots, [str(k) for k in shots])
        ax.set_title(f"{key[0]}: {key[1]}-way, {key[2]}", fontsize=9)
        ax.set_xlabel("support images per class K")
        ax.set_ylabel(ylabel)
    return _save(fig, axes, len(panels), path)


def plot_accuracy_vs_k(table: pd.DataFrame, path: str | Path) -> Path:
    """Mean accuracy (%) against K per cell, one panel per grid × way × policy."""
    return _k_plot(table, path, "mean", ("ci_low", "ci_high"), "accuracy (%)", zero=False)


def plot_diff_vs_k(table: pd.DataFrame, path: str | Path) -> Path:
    """Paired difference to the reference (BN) in points against K, with its 95% interval."""
    return _k_plot(table, path, "diff_to_bn", ("diff_low", "diff_high"), "difference to BN (points)", zero=True)


def plot_w_spectra(spectra: pd.DataFrame, path: str | Path) -> Path:
    """Largest and smallest singular value of W per layer against training episodes, one panel per cell."""
    path = Path(path)
    panels = list(spectra.groupby(["grid", "cell", "norm"], sort=False)) if not spectra.empty else []
    fig, axes = _panels(len(panels))
    for ax, ((grid, _cell, norm), group) in zip(axes, panels, strict=False):
        mean = group.groupby(["layer", "episode"], sort=True)[["sv_max", "sv_min"]].mean().reset_index()
        for i, (_layer, line) in enumerate(mean.groupby("layer", sort=True)):
            color = f"C{i}"
            ax.plot(line["episode"], line["sv_max"], color=color, label=f"layer {i + 1}: max")
            ax.plot(line["episode"], line["sv_min"], color=color, ls="--", label=f"layer {i + 1}: min")
        ax.set_yscale("log")
        ax.set_title(f"{grid}: {norm}", fontsize=9)
        ax.set_xlabel("training episodes")
        ax.set_ylabel("singular value of W")
    if not panels:
        axes[0].text(0.5, 0.5, "no whitening matrices recorded", ha="center", va="center")
        axes[0].set_axis_off()
        return _save(fig, axes, 1, path)
    return _save(fig, axes, len(panels), path)
