#!/usr/bin/env python
"""Recompute the statistics of the committed result CSVs from their per-episode inputs and compare, as printed.

* ``results/compare_*.csv`` (written by ``run_episode.py compare --out``): every row's means, CIs, difference,
  ``p_t``, ``p_perm`` and wins/ties/losses are recomputed with :func:`fewshot.evaluation.stats.paired_comparison`
  (the defaults of ``compare``: 20,000 sign patterns, seed 0) from the two runs' archived ``eval/*/episodes.csv``,
  formatted as ``compare`` formats them (``%.6g``) and compared as text.
* ``results/accuracy.csv`` (``run_episode.py table``): every row's ``mean`` and ``ci95`` are recomputed with
  :func:`fewshot.evaluation.stats.mean_ci` from the run's ``episodes.csv`` and compared at the printed 4 decimals.

Runs are found by their directory name under ``results/runs``, ``results/ablations``, ``results/pilots`` and
``results/previous``, and their evaluation by dataset, way, shot, query, episodes, seed and policy. The pages
generated from these CSVs are checked by ``python scripts/render_results.py --check``.

``--scipy-permutation`` also prints what ``scipy.stats.permutation_test`` (sign flips, the same 20,000 patterns
and seed) would give for each ``p_perm``: the measurement behind the choice of generator in docs/statistics.md.

Usage: python scripts/check_results_stats.py [--results DIR] [--scipy-permutation]   (exit 1 if a value differs)
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.stats

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fewshot.evaluation.outputs import list_evals, read_episode_accuracies  # noqa: E402
from fewshot.evaluation.stats import mean_ci, paired_comparison  # noqa: E402
from fewshot.reports.table import load_run_info  # noqa: E402

ARCHIVES = ("runs", "ablations", "pilots", "previous")
COMPARE_COLUMNS = (
    "reference_mean", "reference_ci95", "other_mean", "other_ci95", "diff", "diff_ci95", "p_t", "p_perm",
    "wins", "ties", "losses",
)  # fmt: skip


def find_run(results: Path, run: str, learner: str | None = None) -> Path:
    """The archived run directory named ``run`` (``<experiment>/<run>``, ``sweeps/<grid>/<cell>/seed<s>``, or a bare
    run name in any experiment).

    ``learner`` tells apart runs of the same name in different experiments (``headline-bn`` of ProtoNet and MAML).
    """
    parts = Path(run).parts  # accuracy.csv: <experiment>/<run> or sweeps/<grid>/<cell>/seed<s>; compare: runs/...
    if parts and parts[0] == "runs":
        parts = parts[1:]
    if "sweeps" in parts:  # a study run (sweeps/..., runs/sweeps/..., results/study/sweeps/...), archived there
        name, archives = "/".join(parts[parts.index("sweeps") + 1 :]), ("study/sweeps",)
    else:
        name, archives = ("/".join(parts[-2:]) if len(parts) > 1 else f"*/{run}"), ARCHIVES
    hits = sorted(p for archive in archives for p in (results / archive).glob(name) if p.is_dir())
    if len(hits) > 1 and learner is not None:
        hits = [p for p in hits if load_run_info(p)["config"].get("learner", {}).get("name") == learner]
    if len(hits) != 1:
        raise SystemExit(f"run {run!r}: expected one archived directory named {name!r} under {ARCHIVES}, got {hits}")
    return hits[0]


def find_accuracies(run_dir: Path, row: pd.Series, policy: str):  # noqa: ANN201 - numpy array
    """Per-episode accuracies of the evaluation of ``run_dir`` matching the row's episodes and ``policy``."""
    keys = {"dataset": row["dataset"], "way": int(row["way"]), "shot": int(row["shot"]), "query": int(row["query"]),
            "n": int(row["episodes"]), "seed": int(row["seed"]), "policy": policy}  # fmt: skip
    folders = [s["folder"] for s in list_evals(run_dir) if all(s.get(k) == v for k, v in keys.items())]
    if len(folders) != 1:
        raise SystemExit(f"{run_dir}: expected one evaluation with {keys}, got {folders}")
    return read_episode_accuracies(folders[0])


def scipy_sign_flip_p(ref: np.ndarray, other: np.ndarray, shift: bool) -> float:
    """``p_perm`` by ``scipy.stats.permutation_test`` (for comparison only; see docs/statistics.md).

    The statistic is ``|Σ d|``, or ``|Σ d| + Σ|d|`` with ``shift`` (the same test, with scipy's relative tie
    tolerance made larger than the rounding of the sums).
    """
    d = other - ref
    d = d[d != 0.0]
    offset = float(np.abs(d).sum()) if shift else 0.0
    res = scipy.stats.permutation_test(
        (d,), lambda x, axis: np.abs(x.sum(axis=axis)) + offset, permutation_type="samples", vectorized=True,
        n_resamples=20_000, batch=2_000, alternative="greater", rng=np.random.default_rng(0),
    )  # fmt: skip
    return float(res.pvalue)


def check_compare(path: Path, results: Path, with_scipy: bool = False) -> list[str]:
    committed = pd.read_csv(path, comment="#", dtype=str, keep_default_na=False)
    numeric = pd.read_csv(path, comment="#")
    diffs = []
    for i, row in numeric.iterrows():
        ref = find_accuracies(find_run(results, row["reference_run"]), row, row["reference_policy"])
        other = find_accuracies(find_run(results, row["other_run"]), row, row["other_policy"])
        pair = paired_comparison(ref, other)
        a, b = mean_ci(ref), mean_ci(other)
        values = {
            "reference_mean": 100 * a.mean, "reference_ci95": 100 * a.ci95,
            "other_mean": 100 * b.mean, "other_ci95": 100 * b.ci95,
            "diff": 100 * pair.mean_diff, "diff_ci95": 100 * pair.ci95_diff, "p_t": pair.p_t, "p_perm": pair.p_perm,
            "wins": pair.wins, "ties": pair.ties, "losses": pair.losses,
        }  # fmt: skip
        for col in COMPARE_COLUMNS:
            value = values[col]
            text = str(value) if isinstance(value, int) else f"{value:.6g}"
            if text != committed.at[i, col]:
                diffs.append(f"{path.name} row {i + 1} {col}: committed {committed.at[i, col]}, recomputed {text}")
        print(f"{path.name} row {i + 1}: {row['other']} vs {row['reference']} ({row['way']}-way {row['shot']}-shot, "
              f"{row['other_policy']}): p_t {values['p_t']:.6g}, p_perm {values['p_perm']:.6g} "
              f"({'exact' if pair.perm_exact else f'{pair.perm_resamples} sign flips'})")  # fmt: skip
        if with_scipy:
            print(f"    scipy.stats.permutation_test: |sum d| {scipy_sign_flip_p(ref, other, False):.6g}, "
                  f"|sum d| + sum |d| {scipy_sign_flip_p(ref, other, True):.6g}")  # fmt: skip
    return diffs


def check_accuracy(path: Path, results: Path) -> list[str]:
    frame = pd.read_csv(path, comment="#")
    diffs = []
    for i, row in frame.iterrows():
        if pd.isna(row["mean"]):
            continue
        r = mean_ci(find_accuracies(find_run(results, row["run"], row["learner"]), row, row["policy"]))
        for col, value in (("mean", 100 * r.mean), ("ci95", 100 * r.ci95)):
            if not math.isclose(round(value, 4), row[col], abs_tol=1e-9):
                diffs.append(f"{path.name} row {i + 1} {col}: committed {row[col]:.4f}, recomputed {value:.4f}")
    print(f"{path.name}: {len(frame)} rows")
    return diffs


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=ROOT / "results", help="results folder (default: results/)")
    parser.add_argument("--scipy-permutation", action="store_true", help="also print scipy's p_perm for each row")
    args = parser.parse_args(argv)
    diffs = []
    for path in sorted(args.results.glob("compare_*.csv")):
        diffs += check_compare(path, args.results, args.scipy_permutation)
    diffs += check_accuracy(args.results / "accuracy.csv", args.results)
    for line in diffs:
        print("DIFFERS:", line)
    print(f"{len(diffs)} printed value(s) differ" if diffs else "every printed statistic is reproduced")
    return 1 if diffs else 0


if __name__ == "__main__":
    raise SystemExit(main())
