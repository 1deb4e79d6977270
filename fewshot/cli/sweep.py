"""``run_episode.py sweep``: run, inspect, plan and report a study grid (``configs/study/<grid>.yaml``).

::

    python run_episode.py sweep [run] --grid FILE [--only CELL[/seedS] ...] [--until-episodes N] [--no-eval]
    python run_episode.py sweep status --grid FILE [--only ...]
    python run_episode.py sweep plan --grid FILE [--measured DIR ...]        (= sweep --grid FILE --dry-run)
    python run_episode.py sweep report --grid FILE [--grid FILE ...] [--out-dir results] [--force]

``run`` trains every cell × seed to its episode budget in the grid's priority order (finished runs skipped,
stopped ones resumed exactly), evaluates each finished run at every (way, K, policy) of the support-size sweep
and records the whitening diagnostics; run folders are ``<runs root>/sweeps/<grid>/<cell>/seed<seed>/``.
``status`` prints one row per run: state (todo/running/stopped/failed/finished), episodes done/target, training
minutes, evaluations done/total, and the command that runs exactly that run (hand it to another machine sharing
the runs root). ``plan`` estimates what is left from measured step and evaluation times. ``report`` writes the
study table (CSV), the plots and the findings (see docs/study.md).
"""

from __future__ import annotations

import argparse
import shlex
import sys

from fewshot.cli.device_option import add_device_option

__all__ = ["register", "run", "run_command"]

ACTIONS = ("run", "status", "plan", "report")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "sweep",
        help="run / status / plan / report a study grid (cells x seeds, episode budgets, resumable)",
        description=__doc__.split("::")[0].strip().splitlines()[0],
    )
    add = parser.add_argument
    add_device_option(parser)
    add("action", nargs="?", default="run", choices=ACTIONS, help="what to do (default: run)")
    add("--grid", action="append", required=True, metavar="FILE",
        help="grid file, e.g. configs/study/omniglot_protonet.yaml (report accepts several)")  # fmt: skip
    add("--only", action="append", default=[], metavar="PATTERN",
        help="only runs whose CELL/seedS or CELL matches this fnmatch pattern (repeatable)")  # fmt: skip
    add("--until-episodes", type=int, default=None, metavar="N",
        help="stop each run at N training episodes this time (a pilot measuring step time; resumed later)")  # fmt: skip
    add("--no-eval", action="store_true", help="train only; do not evaluate or diagnose finished runs")
    add("--dry-run", action="store_true", help="print the plan and the estimated cost instead of running")
    add("--measured", action="append", default=None, metavar="DIR",
        help="plan: folders of runs whose metrics give measured times (default: runs root, results/runs)")  # fmt: skip
    add("--runs-root", default=None, metavar="DIR", help="runs root (default: $FEWSHOT_RUNS or ./runs)")
    add("--out-dir", default="results", metavar="DIR", help="report: where the CSV, plots and findings go")
    add("--force", action="store_true", help="report: replace existing outputs")
    add("--verbose", action="store_true", help="progress bars while training")
    parser.set_defaults(func=run)


def run_command(grid_path: str, key: str, runs_root: str | None) -> str:
    """The command that runs one planned run, independent of every other run."""
    argv = ["python", "run_episode.py", "sweep", "--grid", grid_path, "--only", key]
    if runs_root is not None:
        argv += ["--runs-root", runs_root]
    return shlex.join(argv)


def run(args: argparse.Namespace) -> int:
    from fewshot.errors import ConfigError
    from fewshot.study.grid import load_grid, plan_runs, select_runs
    from fewshot.study.status import format_status, run_status

    action = "plan" if args.dry_run else args.action
    if action == "report":
        from fewshot.study.report import write_report

        grids = [load_grid(g) for g in args.grid]
        for path in write_report(grids, args.out_dir, runs_root=args.runs_root, force=args.force):
            print(f"wrote {path}")
        return 0
    if len(args.grid) != 1:
        raise ConfigError(f"sweep {action} takes one --grid, got {len(args.grid)}; only report combines grids")
    if args.until_episodes is not None and args.until_episodes < 1:
        raise ConfigError(f"--until-episodes must be a positive number of episodes, got {args.until_episodes}")
    grid = load_grid(args.grid[0])
    runs = select_runs(plan_runs(grid, args.runs_root), args.only)
    commands = [run_command(args.grid[0], r.key, args.runs_root) for r in runs]
    if action == "status":
        print(format_status([run_status(r) for r in runs], commands))
        return 0
    if action == "plan":
        from fewshot.study.plan import estimate, format_plan, measure
        from fewshot.training.episode_sets import runs_root

        folders = args.measured if args.measured is not None else [runs_root(args.runs_root), "results/runs"]
        measured = measure(folders)
        print(f"# plan of grid {grid.name!r} ({len(runs)} runs), times measured in {measured.runs} run(s) under "
              f"{', '.join(map(str, folders))}")  # fmt: skip
        print(format_plan(estimate([run_status(r) for r in runs], measured), commands))
        return 0
    from fewshot.study.sweep import run_sweep

    outcome = run_sweep(
        grid, runs, until_episodes=args.until_episodes, evaluate=not args.no_eval, quiet=not args.verbose,
        runs_root=args.runs_root, log=lambda line: print(line, flush=True),
    )  # fmt: skip
    print(
        f"[sweep] done: {len(outcome.trained)} trained to target, {len(outcome.evaluated)} evaluated, "
        f"{len(outcome.skipped)} already complete, {len(outcome.busy)} busy elsewhere, {len(outcome.failed)} failed"
        + (f" ({', '.join(outcome.failed)})" if outcome.failed else "")
    )  # fmt: skip
    print(format_status([run_status(r) for r in runs], commands), file=sys.stdout)
    return 1 if outcome.failed else 0
