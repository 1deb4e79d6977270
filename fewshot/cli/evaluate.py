"""``run_episode.py eval``: evaluate a trained run on its fixed test episodes (mean ± 95% CI).

::

    python run_episode.py eval --run DIR [--episodes N] [--n-way N --n-shot K] [--n-query Q] [--policy P]
                               [--checkpoint best|last] [--check-leak [--leak-episodes 50]] [--json]

The episodes are the shared, content-addressed fixed set of the run's test split (600 episodes, 15 queries
per class and seed ``eval.seed`` by default). Per-episode accuracies go to ``<run>/eval/<key>/episodes.csv``
and the summary to ``summary.json``; an identical earlier evaluation (same episodes, policy and checkpoint
file) is reused. ``--check-leak`` also scores the first ``--leak-episodes`` episodes' queries one at a time
and reports whether predictions depend on the other queries (transductive) or not.
"""

from __future__ import annotations

import argparse
import json

from fewshot.cli.device_option import add_device_option
from fewshot.device import run_device

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "eval",
        help="evaluate a run on fixed test episodes (mean ± 95%% CI), optionally check for transductive leaks",
        description=__doc__.split("::")[0].strip().splitlines()[0],
    )
    add = parser.add_argument
    add_device_option(parser)
    add("--run", required=True, metavar="DIR", help="run directory written by `train`")
    add("--episodes", type=int, default=None, metavar="N", help="test episodes (default: eval.episodes, 600)")
    add("--n-way", type=int, default=None, metavar="N", help="classes per episode (default: eval.n_way)")
    add("--n-shot", type=int, default=None, metavar="K", help="support images per class (default: eval.n_shot)")
    add("--n-query", type=int, default=None, metavar="Q", help="queries per class (default: eval.n_query, 15)")
    add(
        "--policy", default=None, choices=("running", "support", "transductive"),
        help="test-time norm statistics: running (training statistics), support (support-set statistics), "
        "transductive (batch statistics, queries included); default: eval.norm_policy",
    )  # fmt: skip
    add("--checkpoint", default="best", choices=("best", "last"), help="checkpoint to score (default: best)")
    add("--check-leak", action="store_true", help="also compare scoring the queries whole vs one at a time")
    add("--leak-episodes", type=int, default=50, metavar="N", help="episodes for --check-leak (default: 50)")
    add("--no-reuse", action="store_true", help="recompute even if a matching evaluation exists")
    add("--runs-root", default=None, metavar="DIR", help="holds _episode_sets/ (default: $FEWSHOT_RUNS or ./runs)")
    add("--json", action="store_true", help="print the summary (and the leak check) as JSON")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import sys

    from fewshot.evaluation.compare import run_label
    from fewshot.evaluation.run_eval import evaluate_run, load_run_config
    from fewshot.reports.text import format_eval
    from fewshot.training.distributed import from_env, shutdown

    dist = from_env(run_device(load_run_config(args.run).device))  # under torchrun: the ranks split the episodes
    try:
        evaluation = evaluate_run(
            args.run, n_way=args.n_way, n_shot=args.n_shot, n_query=args.n_query, episodes=args.episodes,
            policy=args.policy, checkpoint=args.checkpoint, reuse=not args.no_reuse,
            leak_episodes=args.leak_episodes if args.check_leak else None,
            progress=sys.stderr.isatty() and not args.json, runs_root=args.runs_root, dist=dist,
        )  # fmt: skip
    finally:
        shutdown(dist)
    if not dist.is_main:  # rank 0 reports
        return 0
    if args.json:
        out = {"run": str(evaluation.run_dir), "eval_folder": str(evaluation.folder), "reused": evaluation.reused,
               "summary": evaluation.summary}  # fmt: skip
        if evaluation.leak is not None:
            out["leak"] = evaluation.leak.to_dict()
        print(json.dumps(out, indent=2, default=str))
    else:
        print(format_eval(run_label(load_run_config(args.run)), evaluation))
    return 0
