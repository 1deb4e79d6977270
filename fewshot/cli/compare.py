"""``run_episode.py compare``: paired comparison of runs on the same fixed test episodes.

::

    python run_episode.py compare --runs REFERENCE OTHER [OTHER ...] [--n-way N --n-shot K] [--policy P] [--json]
                                  [--out FILE.csv [--force | --append]]

Every run is evaluated on the one shared test-episode file (existing evaluations with the same episodes,
policy and checkpoint are reused). Each run after the first is compared with the first: mean per-episode
accuracy difference with its 95% CI, paired t-test p-value, sign-flip permutation p-value, and
wins/ties/losses over episodes. Runs that do not share dataset, protocol, test split, data options and eval
settings are refused with the first difference named. ``--n-way/--n-shot/--n-query/--episodes`` evaluate all
runs at other settings than their configs', ``--policy`` with another test-time norm policy than theirs (e.g.
``support`` for MAML runs whose default is ``transductive``). ``--out`` also writes one CSV row per pair
(accuracies in percent), starting with a ``# command:`` line, for ``results/``; ``--append`` adds the rows of
this comparison (e.g. at another way/shot) to an existing file with the same columns, and its command as one more
``# command:`` line.
"""

from __future__ import annotations

import argparse
import json

from fewshot.cli.device_option import add_device_option

__all__ = ["comparison_rows", "register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="paired comparison of runs on the same test episodes (difference, CI, p-values, wins/ties/losses)",
        description="Compare runs on identical fixed test episodes; the first run is the reference.",
    )
    add = parser.add_argument
    add_device_option(parser)
    add("--runs", nargs="+", required=True, metavar="DIR", help="run directories; the first is the reference")
    add("--no-reuse", action="store_true", help="recompute evaluations even if matching ones exist")
    add("--runs-root", default=None, metavar="DIR", help="holds _episode_sets/ (default: $FEWSHOT_RUNS or ./runs)")
    add("--n-way", type=int, default=None, metavar="N", help="evaluate every run N-way (default: its eval.n_way)")
    add("--n-shot", type=int, default=None, metavar="K", help="support images per class (default: eval.n_shot)")
    add("--n-query", type=int, default=None, metavar="Q", help="queries per class (default: eval.n_query)")
    add("--episodes", type=int, default=None, metavar="N", help="test episodes (default: eval.episodes)")
    add(
        "--policy",
        choices=("running", "support", "transductive"),
        default=None,
        help="test-time norm statistics for every run (default: each run's eval.norm_policy)",
    )
    add("--json", action="store_true", help="print the comparison as JSON (accuracies as fractions)")
    add("--out", default=None, metavar="FILE.csv", help="also write the pairs as CSV (accuracies in percent)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--force", action="store_true", help="let --out replace an existing file")
    mode.add_argument("--append", action="store_true", help="add the rows to an existing --out file (same columns)")
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

    if args.append and args.out is None:
        raise ConfigError("--append needs --out FILE.csv (the file to add rows to)")
    previous = _previous_csv(Path(args.out)) if args.append and Path(args.out).exists() else None
    if args.out is not None and Path(args.out).exists() and not (args.force or args.append):
        raise ConfigError(
            f"refusing to overwrite {args.out!r} (--out); pass --force to replace it, --append to add rows to it, "
            "or choose another file"
        )
    comparison = compare_runs(
        args.runs, reuse=not args.no_reuse, progress=sys.stderr.isatty() and not args.json, runs_root=args.runs_root,
        n_way=args.n_way, n_shot=args.n_shot, n_query=args.n_query, episodes=args.episodes, policy=args.policy,
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
        head = f"# command: {command_line()}\n"
        if previous is not None:
            comments, header, rows = previous
            new_header, _, new_rows = text.partition("\n")
            if header != new_header:
                raise ConfigError(
                    f"cannot --append to {args.out!r}: its columns are {header!r}, this comparison writes "
                    f"{new_header!r}; write to another file (--out) or replace it (--force)"
                )
            head, text = comments + head, f"{header}\n{rows}{new_rows}"
        atomic_write_text(Path(args.out), head + text)
        print(f"{'appended to' if previous is not None else 'wrote'} {args.out}", file=sys.stderr)
    return 0


def _previous_csv(path) -> tuple[str, str, str]:  # noqa: ANN001 - pathlib.Path
    """An existing ``--out`` file split into its ``#`` comment lines, its header line and its rows (newline-ended)."""
    lines = path.read_text().splitlines(keepends=True)
    n_comments = next((i for i, line in enumerate(lines) if not line.startswith("#")), len(lines))
    if n_comments == len(lines):
        from fewshot.errors import ConfigError

        raise ConfigError(f"cannot --append to {str(path)!r}: it has no CSV header; choose another file or --force")
    rows = "".join(lines[n_comments + 1 :])
    if rows and not rows.endswith("\n"):
        rows += "\n"
    return "".join(lines[:n_comments]), lines[n_comments].rstrip("\n"), rows
