"""``run_episode.py compare``: paired comparison of runs on the same fixed test episodes.

::

    python run_episode.py compare --runs REFERENCE OTHER [OTHER ...] [--n-way N --n-shot K] [--json]
                                  [--out FILE.csv [--force]]

Every run is evaluated on the one shared test-episode file (existing evaluations with the same episodes,
policy and checkpoint are reused). Each run after the first is compared with the first: mean per-episode
accuracy difference with its 95% CI, paired t-test p-value, sign-flip permutation p-value, and
wins/ties/losses over episodes. Runs that do not share dataset, protocol, test split, data options and eval
settings are refused with the first difference named. ``--n-way/--n-shot/--n-query/--episodes`` evaluate all
runs at other settings than their configs'. ``--out`` also writes one CSV row per pair (accuracies in percent),
starting with a ``# command:`` line, for ``results/``.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["comparison_rows", "register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="paired comparison of runs on the same test episodes (difference, CI, p-values, wins/ties/losses)",
        description="Compare runs on identical fixed test episodes; the first run is the reference.",
    )
    add = parser.add_argument
    add("--runs", nargs="+", required=True, metavar="DIR", help="run directories; the first is the reference")
    add("--no-reuse", action="store_true", help="recompute evaluations even if matching ones exist")
    add("--runs-root", default=None, metavar="DIR", help="holds _episode_sets/ (default: $FEWSHOT_RUNS or ./runs)")
    add("--n-way", type=int, default=None, metavar="N", help="evaluate every run N-way (default: its eval.n_way)")
    add("--n-shot", type=int, default=None, metavar="K", help="support images per class (default: eval.n_shot)")
    add("--n-query", type=int, default=None, metavar="Q", help="queries per class (default: eval.n_query)")
    add("--episodes", type=int, default=None, metavar="N", help="test episodes (default: eval.episodes)")
    add("--json", action="store_true", help="print the comparison as JSON (accuracies as fractions)")
    add("--out", default=None, metavar="FILE.csv", help="also write the pairs as CSV (accuracies in percent)")
    add("--force", action="store_true", help="let --out replace an existing file")
    parser.set_defaults(func=run)


def comparison_rows(comparison) -> list[dict]:  # noqa: ANN001 - fewshot.evaluation.compare.Comparison
    """One flat row per pair: the episodes, both runs, the difference with its CI and p-values (percent)."""
    d = comparison.to_dict()
    ep, ref = d["episodes"], d["runs"][0]
    rows = []
    for other, pair in zip(d["runs"][1:], d["pairs"], strict=True):
        rows.append(
            {
                "dataset": ep["dataset"], "protocol": ep["protocol"], "way": ep["way"], "shot": ep["shot"],
                "query": ep["query"], "episodes": ep["n"], "seed": ep["seed"],
                "reference": ref["label"], "reference_policy": ref["policy"],
                "reference_mean": 100 * ref["mean"], "reference_ci95": 100 * ref["ci95"],
                "other": other["label"], "other_policy": other["policy"],
                "other_mean": 100 * other["mean"], "other_ci95": 100 * other["ci95"],
                "diff": 100 * pair["mean_diff"], "diff_ci95": 100 * pair["ci95_diff"],
                "p_t": pair["p_t"], "p_perm": pair["p_perm"],
                "wins": pair["wins"], "ties": pair["ties"], "losses": pair["losses"],
                "reference_run": ref["run"], "other_run": other["run"],
            }
        )  # fmt: skip
    return rows


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from fewshot.errors import ConfigError
    from fewshot.evaluation.compare import compare_runs
    from fewshot.reports.text import format_comparison

    if args.out is not None and Path(args.out).exists() and not args.force:
        raise ConfigError(f"refusing to overwrite {args.out!r} (--out); pass --force or choose another file")
    comparison = compare_runs(
        args.runs, reuse=not args.no_reuse, progress=sys.stderr.isatty() and not args.json, runs_root=args.runs_root,
        n_way=args.n_way, n_shot=args.n_shot, n_query=args.n_query, episodes=args.episodes,
    )  # fmt: skip
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2, default=str))
    else:
        print(format_comparison(comparison))
    if args.out is not None:
        import pandas as pd

        from fewshot.evaluation.outputs import atomic_write_text
        from fewshot.provenance import command_line

        frame = pd.DataFrame(comparison_rows(comparison))
        text = frame.to_csv(index=False, float_format="%.6g")
        atomic_write_text(Path(args.out), f"# command: {command_line()}\n{text}")
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
