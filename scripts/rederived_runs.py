#!/usr/bin/env python
"""How a retrained run's numbers moved from the original's: paired on the same fixed test episodes.

A run retrained from its recorded command (``scripts/retrain_headline.sh``) is evaluated on the same episode
files and policies as the original. For every evaluation of the original (``eval/*/summary.json``) this finds the
retrained run's evaluation of the same episode file (content hash), policy and checkpoint kind, and writes one
row: both means with their 95% CIs (``1.96·s/√n`` over episodes), the paired difference retrained − original
with its CI, the paired t and sign-flip p-values (:func:`fewshot.evaluation.stats.paired_comparison`), and
whether the retrained mean lies inside the original's CI. It reads only the per-episode files, so it works on
archived runs whose original weights were never kept.

Usage: python scripts/rederived_runs.py OLD=NEW [OLD=NEW ...] --out results/headline_rederived.csv [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fewshot.evaluation.outputs import EVAL_DIR, read_episode_accuracies, read_summary  # noqa: E402
from fewshot.evaluation.stats import mean_ci, paired_comparison  # noqa: E402

COLUMNS = [
    "original", "retrained", "way", "shot", "query", "policy", "episodes", "original_mean", "original_ci95",
    "retrained_mean", "retrained_ci95", "diff", "diff_ci95", "p_t", "p_perm", "inside_original_ci",
]  # fmt: skip


def _evaluations(run: Path) -> dict[tuple[str, str, str], Path]:
    """``{(episode hash, policy, checkpoint kind): eval folder}`` of a run."""
    found = {}
    for summary_path in sorted((run / EVAL_DIR).glob("*/summary.json")):
        s = read_summary(summary_path.parent)
        found[(s["episode_hash"], s["policy"], s.get("checkpoint", "best"))] = summary_path.parent
    return found


def rows(original: Path, retrained: Path) -> list[dict]:
    """One row per evaluation of ``original``; ValueError if ``retrained`` lacks a matching evaluation."""
    new = _evaluations(retrained)
    out = []
    for key, folder in _evaluations(original).items():
        if key not in new:
            s = read_summary(folder)
            raise ValueError(
                f"{retrained} has no evaluation matching {folder} ({s['way']}-way {s['shot']}-shot "
                f"{s['query']}-query, policy {s['policy']}, checkpoint {key[2]}); run the original's eval command "
                f"(in {folder / 'summary.json'}) on the retrained run first"
            )
        s = read_summary(folder)
        a, b = read_episode_accuracies(folder), read_episode_accuracies(new[key])
        p = paired_comparison(a, b)
        ci_a, ci_b = mean_ci(a), mean_ci(b)
        out.append({
            "original": str(original), "retrained": str(retrained), "way": s["way"], "shot": s["shot"],
            "query": s["query"], "policy": s["policy"], "episodes": p.n, "original_mean": 100 * ci_a.mean,
            "original_ci95": 100 * ci_a.ci95, "retrained_mean": 100 * ci_b.mean, "retrained_ci95": 100 * ci_b.ci95,
            "diff": 100 * p.mean_diff, "diff_ci95": 100 * p.ci95_diff, "p_t": p.p_t, "p_perm": p.p_perm,
            "inside_original_ci": abs(ci_b.mean - ci_a.mean) <= ci_a.ci95,
        })  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pairs", nargs="+", metavar="OLD=NEW", help="original run folder = retrained run folder")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    args = parser.parse_args(argv)
    if args.out.exists() and not args.force:
        parser.error(f"{args.out} exists; pass --force to replace it")
    table = []
    for pair in args.pairs:
        old, sep, new = pair.partition("=")
        if not sep or not old or not new:
            parser.error(f"expected OLD=NEW (two run folders), got {pair!r}")
        table += rows(Path(old), Path(new))
    command = "python scripts/rederived_runs.py " + " ".join(argv if argv is not None else sys.argv[1:])
    frame = pd.DataFrame(table, columns=COLUMNS)
    args.out.write_text(f"# command: {command}\n" + frame.to_csv(index=False, float_format="%.6g"))
    print(frame.to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
