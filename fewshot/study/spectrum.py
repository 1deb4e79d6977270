"""The spectrum of every whitening matrix ``W`` of a model state, recorded over training in ``w_spectrum.csv``.

Whitening layers keep ``W`` as a ``(groups, g, g)`` buffer: SWBN's learned ``whitening_matrix`` (Zhang et al.,
CVPR 2021) and the running average ``running_wm`` of DBN (Huang et al., CVPR 2018) and IterNorm (Huang et al.,
CVPR 2019). The sweep trains a run in segments of ``diagnostics.spectrum_every`` episodes (an exact resume:
the final weights are those of an uninterrupted run) and appends one row per layer after each segment.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping
from pathlib import Path

import torch

from fewshot.evaluation.outputs import atomic_write_text

__all__ = ["W_BUFFERS", "SPECTRUM_FILE", "SPECTRUM_COLUMNS", "spectrum_rows", "append_spectrum"]

#: Buffer names holding a whitening matrix ``W (groups, g, g)``.
W_BUFFERS = ("whitening_matrix", "running_wm")
SPECTRUM_FILE = "w_spectrum.csv"
SPECTRUM_COLUMNS = ("episode", "layer", "buffer", "groups", "group_size", "sv_max", "sv_median", "sv_min", "cond")


def spectrum_rows(state: Mapping[str, torch.Tensor], episode: int) -> list[dict[str, object]]:
    """One row per whitening buffer of ``state`` (a model ``state_dict``): singular values over all groups.

    ``cond = sv_max / sv_min`` (``inf`` when ``sv_min`` is 0). Layers are named by their module path.
    """
    rows = []
    for key, w in state.items():
        layer, _, buffer = key.rpartition(".")
        if buffer not in W_BUFFERS or w.dim() != 3:
            continue
        s = torch.linalg.svdvals(w.detach().double()).flatten()
        lo, hi = float(s.min()), float(s.max())
        rows.append({
            "episode": int(episode), "layer": layer, "buffer": buffer, "groups": int(w.shape[0]),
            "group_size": int(w.shape[-1]), "sv_max": hi, "sv_median": float(s.median()), "sv_min": lo,
            "cond": hi / lo if lo > 0 else float("inf"),
        })  # fmt: skip
    return rows


def append_spectrum(run_dir: str | Path, state: Mapping[str, torch.Tensor], episode: int) -> int:
    """Add the rows of ``state`` at ``episode`` to ``<run_dir>/w_spectrum.csv`` (rewritten atomically).

    Rows already recorded for ``episode`` are replaced, so re-recording after a resume never duplicates them.
    Returns the number of rows written for this episode (0 for a model without whitening matrices: no file).
    """
    rows = spectrum_rows(state, episode)
    if not rows:
        return 0
    path = Path(run_dir) / SPECTRUM_FILE
    old = []
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            old = [r for r in csv.DictReader(f) if int(r["episode"]) != episode]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=SPECTRUM_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(sorted([*old, *rows], key=lambda r: (int(r["episode"]), str(r["layer"]))))
    atomic_write_text(path, buf.getvalue())
    return len(rows)
