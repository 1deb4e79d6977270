"""``run_episode.py train``: meta-train a learner from a YAML experiment config.

::

    python run_episode.py train [--config FILE] [--set KEY=VALUE ...] [--out DIR] [--resume [RUN]]
                                [--max-minutes M] [--seed S] [--data-root DIR] [--quiet] [--dry-run]
                                [--device auto|cpu|cuda|cuda:N] [--deterministic]

The config is ``configs/defaults.yaml`` merged with ``--config`` and the ``--set`` overrides (dotted keys,
YAML values; ``norm=``, ``backbone=`` and ``learner=`` are shorthands). The run writes
``runs/<name>/<UTC time>-<git sha>/`` (or ``--out``): config.yaml, env.json, train_log.csv, metrics.json and
checkpoints/{last,best}.pt. ``--resume RUN`` continues a stopped run exactly where its ``last.pt`` left off
(``RUN``, else ``--out``, else the latest run of the ``--config`` experiment); only the budget-like keys
(train.episodes upwards, train.max_minutes, ...) may change on resume, and each resumed session's changes are
recorded in env.json. Ctrl-C or SIGTERM once: finish the step, save, exit 130. A run stopped before its first
checkpoint is started again in place (by --resume or by the same command); a second process on the same run is
refused (run lock). Checkpoints and config.yaml are verified on resume (docs/reliability.md).

Under ``torchrun --nproc-per-node N run_episode.py train ...`` the N ranks train one run, each on its share of
every meta-step's episodes; rank 0 alone writes the run folder and prints (docs/distributed.md).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fewshot.cli.device_option import add_device_option, device_overrides

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="meta-train a learner from a YAML config (checkpoints, budget, exact resume)",
        description="Meta-train a learner. Config = configs/defaults.yaml, then --config FILE, then the --set "
        "overrides; the run directory gets config.yaml, env.json, train_log.csv, metrics.json and "
        "checkpoints/{last,best}.pt. Ctrl-C or SIGTERM once stops after the current step and saves (resume with "
        "--resume).",
    )
    add = parser.add_argument
    add_device_option(parser)
    add("--config", default=None, metavar="FILE", help="experiment YAML (differences from configs/defaults.yaml)")
    add(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, e.g. --set train.lr=5e-4 --set norm=swbn (repeatable, applied in order)",
    )  # fmt: skip
    add("--out", default=None, metavar="DIR", help="run directory (default runs/<name>/<UTC time>-<git sha>)")
    add(
        "--resume", nargs="?", const="", default=None, metavar="RUN",
        help="continue the run in RUN (or --out, or the latest run of the --config experiment) exactly",
    )  # fmt: skip
    add(
        "--max-minutes", type=float, default=None, metavar="M",
        help="total training-time budget in minutes, earlier sessions included (= --set train.max_minutes=M)",
    )  # fmt: skip
    add("--seed", type=int, default=None, metavar="S", help="training seed (= --set seed=S)")
    add("--data-root", default=None, metavar="DIR", help="data root (= --set data.data_root=DIR)")
    add("--quiet", action="store_true", help="no progress bar")
    add("--dry-run", action="store_true", help="print the resolved config and the run directory, then exit")
    add(
        "--deterministic", action="store_true",
        help="deterministic algorithms, cuBLAS workspace and seeds: two runs on one device give identical logs and "
        "checkpoints (slower on a GPU)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def _overrides(args: argparse.Namespace) -> list[str]:
    out = list(args.overrides)
    if args.max_minutes is not None:
        out.append(f"train.max_minutes={args.max_minutes}")
    if args.seed is not None:
        out.append(f"seed={args.seed}")
    if args.data_root is not None:
        out.append(f"data.data_root={args.data_root!r}")
    return out + device_overrides(args)


def run(args: argparse.Namespace) -> int:
    import yaml

    from fewshot.config import config_to_dict, load_config
    from fewshot.device import run_device
    from fewshot.errors import ConfigError
    from fewshot.training.distributed import from_env, shutdown
    from fewshot.training.run_dir import default_run_dir, find_latest_run, resume_config
    from fewshot.training.trainer import train

    overrides = _overrides(args)
    resume = args.resume is not None
    if resume:
        if args.resume and args.out and Path(args.resume).resolve() != Path(args.out).resolve():
            raise ConfigError(f"--resume {args.resume} and --out {args.out} name different runs; give one of them")
        run_dir = args.resume or args.out
        if not run_dir and args.config is None:
            raise ConfigError("--resume needs the run: --resume RUN (or --config FILE to resume its latest run)")
        run_dir = run_dir or find_latest_run(load_config(args.config, overrides).name)
        cfg = resume_config(run_dir, args.config, overrides)
    else:
        cfg = load_config(args.config, overrides)
        run_dir = args.out or default_run_dir(cfg)
    run_device(cfg.device)  # fail fast: a device this machine lacks is an error before any work
    if args.dry_run:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        print(f"# run directory: {run_dir}{' (resume)' if resume else ''}")
        return 0
    dist = from_env(run_device(cfg.device))  # under torchrun: join the ranks (the trainer reuses the group)
    try:
        run_dir = dist.broadcast_object(run_dir, "broadcast of the run directory")  # rank 0's clock and git sha
        result = train(cfg, run_dir, resume=resume, quiet=args.quiet, deterministic=args.deterministic)
    finally:
        shutdown(dist)
    if not dist.is_main:  # rank 0 reports for the run
        return 0
    m = result.metrics
    if result.best_val_acc is not None:
        best = f"best val acc {result.best_val_acc:.4f} at episode {result.best_episode}"
    else:
        best = "no validation (best.pt = final model)"
    rate = f", {m['episodes_per_second']:.2f} episodes/s" if m.get("episodes_per_second") else ""
    print(
        f"{result.status}: {result.episodes_done}/{cfg.train.episodes} episodes in {m['train_seconds'] / 60:.1f} min"
        f"{rate}; {best}; run directory {result.run_dir}"
    )
    return 0
