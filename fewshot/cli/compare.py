"""``run_episode.py compare``: paired comparison of runs on the same fixed test episodes.

::

    python run_episode.py compare --runs REFERENCE OTHER [OTHER ...] [--json]

Every run is evaluated on the one shared test-episode file (existing evaluations with the same episodes,
policy and checkpoint are reused). Each run after the first is compared with the first: mean per-episode
accuracy difference with its 95% CI, paired t-test p-value, sign-flip permutation p-value, and
wins/ties/losses over episodes. Runs that do not share dataset, protocol, test split, data options and eval
settings are refused with the first difference named.
"""

from __future__ import annotations

import argparse
import json

__all__ = ["register", "run"]


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
    add("--json", action="store_true", help="print the comparison as JSON (accuracies as fractions)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from fewshot.evaluation.compare import compare_runs
    from fewshot.reports.text import format_comparison

    comparison = compare_runs(
        args.runs, reuse=not args.no_reuse, progress=sys.stderr.isatty() and not args.json, runs_root=args.runs_root
    )
    if args.json:
        print(json.dumps(comparison.to_dict(), indent=2, default=str))
    else:
        print(format_comparison(comparison))
    return 0
