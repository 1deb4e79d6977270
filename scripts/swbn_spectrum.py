#!/usr/bin/env python
"""Singular values of every SWBN whitening matrix ``W`` in trained checkpoints, one CSV row per layer.

SWBN (Zhang et al., CVPR 2021) keeps one ``g × g`` matrix per channel group as the buffer ``whitening_matrix``
(shape ``(groups, g, g)``). Where a group's batch covariance is singular (e.g. the first Conv-4 layer on grey
3×3 patches: 64 filters span 9 dimensions, so each 16-channel group has rank ≤ 9) the online update has no fixed
point in the null space and ``W`` grows there; ``shrinkage`` bounds it. This script shows the effect: for each
run and layer it prints the largest and the median singular value of ``W`` over all its groups.

Usage: python scripts/swbn_spectrum.py RUN [RUN ...] [--checkpoint best|last] [--out FILE.csv [--force]]
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._results import environment, rows_to_csv, write_result  # noqa: E402
from fewshot.evaluation.compare import run_label  # noqa: E402
from fewshot.study.spectrum import spectrum_rows as layer_spectrum  # noqa: E402
from fewshot.training.run_dir import read_verified_checkpoint  # noqa: E402


@dataclass
class Row:
    """The spectrum of one SWBN layer's ``W`` (all groups pooled)."""

    run: str
    label: str
    layer: str
    groups: int
    group_size: int
    max_singular_value: float
    median_singular_value: float


def spectrum_rows(run_dir: Path, checkpoint: str = "best") -> list[Row]:
    """One :class:`Row` per ``whitening_matrix`` buffer of ``run_dir/checkpoints/{checkpoint}.pt``.

    The checkpoint is read by the verifying loader (its SHA-256, and its config against ``config.yaml``); the
    singular values are those of :func:`fewshot.study.spectrum.spectrum_rows`, the sweep's record over training.

    Raises:
        ValueError: the checkpoint holds no SWBN layer (the message names the run and its norm).
        DataError: the checkpoint is damaged, edited, or does not belong to ``config.yaml``.
    """
    cfg, payload = read_verified_checkpoint(run_dir, checkpoint)
    rows = [
        Row(run_dir.name, run_label(cfg), r["layer"], r["groups"], r["group_size"], r["sv_max"], r["sv_median"])
        for r in layer_spectrum(payload["model"], episode=0)
        if r["buffer"] == "whitening_matrix"
    ]
    if not rows:
        raise ValueError(
            f"run {str(run_dir)!r} has no SWBN whitening matrix (its norm is {cfg.model.norm!r}); "
            "pass runs trained with norm=swbn"
        )
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, metavar="RUN", help="run directories holding checkpoints/")
    parser.add_argument("--checkpoint", choices=("best", "last"), default="best")
    parser.add_argument("--out", type=Path, help="also write the rows as CSV (with this command on its first line)")
    parser.add_argument("--force", action="store_true", help="let --out replace an existing file")
    args = parser.parse_args(argv)
    rows = [row for run in args.runs for row in spectrum_rows(run, args.checkpoint)]
    command = shlex.join(["python", "scripts/swbn_spectrum.py", *(argv if argv is not None else sys.argv[1:])])
    text = rows_to_csv(rows, Row, environment(), command, {"max_singular_value": ".4g", "median_singular_value": ".4g"})
    print(text, end="")
    if args.out:
        write_result(args.out, text, force=args.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
