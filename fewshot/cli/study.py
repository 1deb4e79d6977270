"""``run_episode.py study``: the Quick-start main job, BN against SWBN under a tiny support set.

::

    python run_episode.py study [--episodes-per-run N] [--out DIR] [--data-root DIR]
                                [--config FILE] [--norms N [N ...]] [--set key=value ...]

On Omniglot (Vinyals split), ProtoNet / Conv-4 is trained once per normalization layer (``batchnorm`` and
``swbn`` by default; config ``configs/study/quickstart.yaml``) on the same training episodes (an episode
budget: ``train.episodes`` of the config, 600, or ``--episodes-per-run``; no time limit), so the printed numbers
are the same on any machine; the study takes about 11 minutes on 2 CPU cores. Every run is then
evaluated on the very same 600 fixed 5-way 1-shot test episodes, and the results table and the paired
comparison (each norm against the first) are printed and written to ``<out>/table.md``, ``<out>/table.csv``,
``<out>/compare.json`` and ``<out>/compare.txt``. The run directories are ``<out>/<norm>/``. ``<out>`` defaults
to ``runs/study/<UTC time>`` and is never reused: an existing folder is refused.

``--config`` and ``--set`` replace the study's config or override single keys (the tests run the study on a
tiny synthetic dataset this way).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from fewshot.cli.device_option import add_device_option

__all__ = [
    "DEFAULT_NORMS", "QUICKSTART_CONFIG", "QUICKSTART_FALLBACK", "StudyResult", "register", "run",
    "run_study",
]  # fmt: skip

DEFAULT_NORMS = ("batchnorm", "swbn")
QUICKSTART_CONFIG = Path(__file__).resolve().parent.parent.parent / "configs" / "study" / "quickstart.yaml"
#: Used only if ``configs/study/quickstart.yaml`` is missing: the same study from the defaults.
QUICKSTART_FALLBACK = (
    "name=study_quickstart", "data.dataset=omniglot", "data.protocol=vinyals", "model.backbone=conv4",
    "learner.name=protonet", "train.episodes=600", "train.max_minutes=null", "eval.n_way=5", "eval.n_shot=1",
    "eval.n_query=15",
    "eval.episodes=600",
)  # fmt: skip


@dataclass(frozen=True)
class StudyResult:
    """What :func:`run_study` produced.

    Attributes:
        out: the study folder.
        run_dirs: one run directory per norm, in the order given (the first is the comparison's reference).
        table_md: the Markdown results table.
        comparison_text: the printed paired comparison.
        seconds: wall time of the whole study.
    """

    out: Path
    run_dirs: tuple[Path, ...]
    table_md: str
    comparison_text: str
    seconds: float


def _default_out() -> Path:
    from fewshot.training.episode_sets import runs_root

    return runs_root() / "study" / datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")


def run_study(
    *,
    config: str | Path | None = None,
    overrides: Sequence[str] = (),
    norms: Sequence[str] = DEFAULT_NORMS,
    out: str | Path | None = None,
    episodes_per_run: int | None = None,
    data_root: str | Path | None = None,
    quiet: bool = False,
    log=print,
) -> StudyResult:
    """Train one run per norm, evaluate all on the same fixed episodes, write the table and the comparison.

    Args:
        config: experiment file (default ``configs/study/quickstart.yaml``; if that file is missing, the
            defaults with :data:`QUICKSTART_FALLBACK`).
        overrides: ``dotted.key=value`` overrides applied after the file.
        norms: normalization layers to train, the first being the reference of the comparison.
        out: the study folder (must not exist); default ``runs/study/<UTC time>``.
        episodes_per_run: training episodes of each run (sets ``train.episodes`` before ``overrides``; ``None``
            keeps the config's).
        data_root: data root (overrides ``data.data_root``).
        quiet: no progress bars.
        log: where progress lines go (``print`` by default).

    Raises:
        ConfigError: ``out`` exists, fewer than two norms, repeated norms, or a bad config/override.
    """
    from fewshot.config import load_config
    from fewshot.errors import ConfigError
    from fewshot.evaluation.compare import compare_runs
    from fewshot.evaluation.outputs import atomic_write_text
    from fewshot.reports.table import format_table, runs_table
    from fewshot.reports.text import format_comparison
    from fewshot.training.trainer import train

    start = time.perf_counter()
    norms = list(norms)
    if len(norms) < 2 or len(set(norms)) != len(norms):
        raise ConfigError(f"the study needs at least two distinct norms to compare, got {norms}")
    if episodes_per_run is not None and (isinstance(episodes_per_run, bool) or episodes_per_run < 1):
        raise ConfigError(f"--episodes-per-run must be a positive number of episodes, got {episodes_per_run}")
    base: list[str] = []
    if config is not None:
        config = Path(config)
        if not config.is_file():
            raise ConfigError(f"study config {str(config)!r} does not exist; pass an existing --config FILE")
    elif QUICKSTART_CONFIG.is_file():
        config = QUICKSTART_CONFIG
    else:
        base = list(QUICKSTART_FALLBACK)
    out = Path(out) if out is not None else _default_out()
    if out.exists():
        raise ConfigError(
            f"refusing to write the study into {str(out)!r}: it already exists (nothing is overwritten); choose "
            "another --out or leave it out for a new timestamped folder"
        )
    extra = [*base]
    if episodes_per_run is not None:
        extra.append(f"train.episodes={episodes_per_run}")
    extra.extend(overrides)
    if data_root is not None:
        extra.append(f"data.data_root={data_root}")
    configs = [load_config(config, [*extra, f"model.norm={norm}"]) for norm in norms]  # validate all up front
    out.mkdir(parents=True)
    run_dirs = []
    for cfg in configs:
        run_dir = out / cfg.model.norm
        budget = f"at most {cfg.train.max_minutes:g} min" if cfg.train.max_minutes is not None else "no time limit"
        log(
            f"[study] training {cfg.learner.name}/{cfg.model.backbone}/{cfg.model.norm} on {cfg.data.dataset}/"
            f"{cfg.data.protocol} ({cfg.train.n_way}-way {cfg.train.n_shot}-shot episodes, {budget}, "
            f"{cfg.train.episodes} episodes) -> {run_dir}"
        )
        result = train(cfg, run_dir, quiet=quiet)
        log(
            f"[study]   {result.status}: {result.episodes_done} episodes in "
            f"{result.metrics.get('train_seconds', 0.0) / 60:.1f} min"
        )
        run_dirs.append(run_dir)
    e = configs[0].eval
    log(
        f"[study] evaluating every run on the same {e.episodes} fixed {e.n_way}-way {e.n_shot}-shot episodes "
        f"({e.n_query} queries per class, seed {e.seed}, policy {e.norm_policy})"
    )
    comparison = compare_runs(run_dirs, progress=not quiet)
    frame = runs_table(run_dirs)
    table_md = format_table(frame, "md")
    comparison_text = format_comparison(comparison)
    atomic_write_text(out / "table.md", table_md)
    atomic_write_text(out / "table.csv", format_table(frame, "csv"))
    atomic_write_text(out / "compare.json", json.dumps(comparison.to_dict(), indent=2, default=str) + "\n")
    atomic_write_text(out / "compare.txt", comparison_text + "\n")
    seconds = time.perf_counter() - start
    log("")
    log("Results (accuracy in %: mean of per-episode accuracies ± 95% CI half-width, 1.96·std/√n):")
    log(table_md)
    log("Paired comparison on identical episodes (difference = run − reference):")
    log(comparison_text)
    log("")
    log(f"[study] done in {seconds / 60:.1f} min; wrote {out}/table.md, table.csv, compare.json, compare.txt")
    return StudyResult(out, tuple(run_dirs), table_md, comparison_text, seconds)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study",
        help="Quick-start main job: ProtoNet/Conv-4 with BN and SWBN on Omniglot 5-way 1-shot, same test episodes",
        description="Train one ProtoNet/Conv-4 per norm layer on the same training episodes, evaluate all on the same "
        "fixed "
        "episodes, print and save the table and the paired comparison.",
    )
    add = parser.add_argument
    add_device_option(parser)
    add("--episodes-per-run", type=int, default=None, metavar="N",
        help="training episodes per run (default: train.episodes of the config, 600)")  # fmt: skip
    add("--out", default=None, metavar="DIR", help="study folder, must not exist (default: runs/study/<UTC time>)")
    add("--data-root", default=None, metavar="DIR", help="data root (default: $FEWSHOT_DATA, ./data, ../shared/data)")
    add("--config", default=None, metavar="FILE", help="study config (default: configs/study/quickstart.yaml)")
    add("--norms", nargs="+", default=list(DEFAULT_NORMS), metavar="NORM",
        help="norm layers to train; the first is the reference (default: batchnorm swbn)")  # fmt: skip
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override (repeatable)")
    add("--quiet", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    run_study(
        config=args.config, overrides=args.overrides, norms=args.norms, out=args.out,
        episodes_per_run=args.episodes_per_run, data_root=args.data_root, quiet=args.quiet,
    )  # fmt: skip
    return 0
