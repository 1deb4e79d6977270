#!/usr/bin/env python
"""Compare the training runs of two run roots: every logged metric and every tensor of the final checkpoint.

For each run folder name present under both roots (e.g. ``before/protonet_bn`` and ``after/protonet_bn``):

* ``train_log.csv``: every column except the wall-clock ``elapsed_s``, row by row (the same episodes must be
  logged); the largest absolute difference per column;
* ``checkpoints/last.pt``: every tensor of the model's ``state_dict`` (parameters and norm state: running
  moments, SWBN's ``W``, ``num_batches_tracked``) and of the optimizer state; the largest absolute difference
  per group, and whether all are bitwise equal.

Prints one row per (run, quantity) and, with ``--out``, writes them as CSV under a comment line holding the
command. Exit status 1 when a quantity differs by more than ``--atol`` (default 0: bitwise equal).

Usage: PYTHONPATH=. python scripts/compare_run_metrics.py BEFORE_ROOT AFTER_ROOT [--out CSV] [--atol A]
"""

from __future__ import annotations

import argparse
import csv
import math
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from fewshot.training.checkpoint import load_checkpoint

_CLOCK_COLUMNS = ("elapsed_s",)
FIELDS = ("run", "quantity", "values", "max_abs_diff", "identical")


def _read_log(path: Path) -> dict[str, list[float]]:
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    columns = [c for c in (rows[0] if rows else {}) if c not in _CLOCK_COLUMNS]
    return {c: [float(r[c]) if r[c] != "" else math.nan for r in rows] for c in columns}


def _column_diff(a: list[float], b: list[float]) -> float:
    if len(a) != len(b):
        return math.inf
    diffs = [0.0 if (math.isnan(x) and math.isnan(y)) else abs(x - y) for x, y in zip(a, b, strict=True)]
    return max(diffs, default=0.0)


def _tensors(obj: Any, prefix: str = "") -> Iterator[tuple[str, torch.Tensor]]:
    """Every tensor in a nested dict/list (an optimizer state, a state_dict), with a dotted path."""
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}" if prefix else str(i))


def _tensor_group_diff(a: Any, b: Any) -> tuple[int, float, bool]:
    ta, tb = dict(_tensors(a)), dict(_tensors(b))
    if ta.keys() != tb.keys():
        return len(ta), math.inf, False
    worst, identical = 0.0, True
    for key, x in ta.items():
        y = tb[key]
        if x.shape != y.shape or x.dtype != y.dtype:
            return len(ta), math.inf, False
        identical &= bool(torch.equal(x, y))
        if x.numel():
            worst = max(worst, float((x.double() - y.double()).abs().max()))
    return len(ta), worst, identical


def compare_runs(before: Path, after: Path, name: str) -> list[dict[str, Any]]:
    """Rows of :data:`FIELDS` for the run ``name`` under the two roots."""
    rows = []
    log_a, log_b = _read_log(before / "train_log.csv"), _read_log(after / "train_log.csv")
    for column in sorted(set(log_a) | set(log_b)):
        a, b = log_a.get(column, []), log_b.get(column, [])
        diff = _column_diff(a, b)
        same = len(a) == len(b) and all(
            (x == y) or (math.isnan(x) and math.isnan(y)) for x, y in zip(a, b, strict=False)
        )
        rows.append({"run": name, "quantity": f"train_log.{column}", "values": len(a), "max_abs_diff": diff,
                     "identical": same})  # fmt: skip
    ca = load_checkpoint(before / "checkpoints" / "last.pt")  # verified against its SHA-256 header
    cb = load_checkpoint(after / "checkpoints" / "last.pt")
    for group in ("model", "optimizer"):
        n, diff, same = _tensor_group_diff(ca[group], cb[group])
        rows.append({"run": name, "quantity": f"last.pt.{group}", "values": n, "max_abs_diff": diff, "identical": same})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path, help="run root of the reference code")
    parser.add_argument("after", type=Path, help="run root of the changed code")
    parser.add_argument("--out", type=Path, help="write the rows as CSV here")
    parser.add_argument("--atol", type=float, default=0.0, help="largest accepted difference (default 0)")
    args = parser.parse_args(argv)
    names = sorted(
        p.name for p in args.before.iterdir() if (p / "train_log.csv").is_file() and (args.after / p.name).is_dir()
    )
    if not names:
        parser.error(f"no run folder with a train_log.csv is under both {args.before} and {args.after}")
    rows = [row for name in names for row in compare_runs(args.before / name, args.after / name, name)]
    width = max(len(r["quantity"]) for r in rows)
    for r in rows:
        print(f"{r['run']:<16} {r['quantity']:<{width}} n={r['values']:<4} max|diff|={r['max_abs_diff']:.3g}"
              f"  identical={r['identical']}")  # fmt: skip
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        with args.out.open("w", newline="") as f:
            f.write(f"# {shlex.join(['python', 'scripts/compare_run_metrics.py', *(argv or sys.argv[1:])])}\n")
            writer = csv.DictWriter(f, fieldnames=FIELDS)
            writer.writeheader()
            writer.writerows(rows)
    return 1 if any(not r["max_abs_diff"] <= args.atol for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
