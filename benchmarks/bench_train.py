"""Meta-training throughput of the real trainer: episodes per second and the share of time outside the step.

Runs ``fewshot.training.train`` itself (real sampler, real logging and checkpoints, real Omniglot from the data
root) for a fixed number of episodes of each setting below, one after the other in one process, each into a
throw-away run directory, and reads the trainer's own accounting from ``metrics.json``:

* ``step_seconds``: time inside the model step (``meta_loss`` + backward + optimizer step);
* ``overhead_seconds``: everything else of the loop (drawing and collating episodes, the training log,
  periodic checkpoints and ``metrics.json``); validation is off;
* ``episodes_per_second = episodes / (step + overhead)`` and ``overhead_fraction = overhead / (step + overhead)``.

Settings (the experiment files the accuracy runs use, unchanged but for the episode count):

* ``protonet``: ``configs/protonet/omniglot_vinyals_1shot.yaml`` (Conv-4 + batchnorm, 60-way 1-shot 5-query,
  channels_last), and the same with ``norm=swbn``;
* ``maml``: ``configs/maml/omniglot_vinyals_5w1s.yaml`` (conv4_maml + batchnorm, 5-way 1-shot, 15 queries per
  class since fewshot 0.2.0 (1 before), meta-batch 32, second order, 1 inner step), and the same with SWBN as
  its MAML run uses it (``norm=swbn``, ``shrinkage=0.1``).

Each row's label is made from the resolved configuration (:func:`setting_label`), so it always says what was
measured, e.g. ``maml conv4_maml batchnorm 5w1s15q mb32 2nd-order``.

The first ``warmup`` episodes of each setting are run in a separate run first (allocator and kernel warm-up)
and not counted. Like ``run_episode.py``, call it through ``python run_episode.py bench train`` so that the
glibc malloc tunables are set.

Usage::

    python run_episode.py bench train [--protonet-episodes 600] [--maml-episodes 640] [--write]
"""

from __future__ import annotations

import inspect
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks._results import environment, rows_to_csv, write_result
from fewshot.registry import option_label

__all__ = ["SETTINGS", "Row", "Setting", "environment", "format_table", "run", "setting_label", "to_csv", "write_csv"]

REPO = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Setting:
    """One measured configuration: an experiment file and ``--set`` overrides."""

    config: str
    overrides: tuple[str, ...] = ()

    def resolve(self, *extra: str) -> Any:
        """The experiment configuration this setting trains: the file, its overrides, then ``extra`` overrides."""
        from fewshot.config import load_config

        return load_config(REPO / self.config, [*self.overrides, *extra])


_PROTONET = "configs/protonet/omniglot_vinyals_1shot.yaml"
_MAML = "configs/maml/omniglot_vinyals_5w1s.yaml"
SETTINGS: tuple[Setting, ...] = (
    Setting(_PROTONET),
    Setting(_PROTONET, ("norm=swbn",)),
    Setting(_MAML),
    Setting(_MAML, ("norm=swbn", "model.norm_kwargs.shrinkage=0.1")),
)


def setting_label(cfg: Any) -> str:
    """``learner backbone norm[options] {way}w{shot}s{query}q``, plus ``mb{meta_batch} {1st|2nd}-order`` for MAML.

    >>> from fewshot.config import load_config
    >>> setting_label(load_config(REPO / _MAML, ["norm=swbn", "model.norm_kwargs.shrinkage=0.1"]))
    'maml conv4_maml swbn[shrinkage=0.1] 5w1s15q mb32 2nd-order'
    """
    t = cfg.train
    label = (
        f"{cfg.learner.name} {cfg.model.backbone} {option_label(cfg.model.norm, cfg.model.norm_kwargs)} "
        f"{t.n_way}w{t.n_shot}s{t.n_query}q"
    )
    if cfg.learner.name == "maml":
        from fewshot.learners import LEARNERS

        default = inspect.signature(LEARNERS.get("maml")).parameters["first_order"].default
        order = "1st" if cfg.learner.kwargs.get("first_order", default) else "2nd"
        label += f" mb{t.meta_batch} {order}-order"
    return label


@dataclass
class Row:
    """The trainer's accounting for one setting."""

    setting: str
    learner: str
    episodes: int
    meta_batch: int
    step_seconds: float
    overhead_seconds: float
    episodes_per_second: float
    steps_per_second: float
    overhead_fraction: float


def _measure(setting: Setting, episodes: int, warmup: int, data_root: str | None) -> Row:
    from fewshot.training.run_dir import read_json
    from fewshot.training.trainer import train

    base = [
        "train.max_minutes=null",
        "data.val_split=null",
        "train.checkpoint_minutes=5.0",
    ]
    if data_root is not None:
        base.append(f"data.data_root={data_root!r}")
    with tempfile.TemporaryDirectory(prefix="fewshot-bench-train-") as tmp:
        if warmup:
            cfg = setting.resolve(*base, f"train.episodes={warmup}")
            train(cfg, Path(tmp) / "warmup", quiet=True, runs_root=tmp)
        cfg = setting.resolve(*base, f"train.episodes={episodes}")
        train(cfg, Path(tmp) / "run", quiet=True, runs_root=tmp)
        m = read_json(Path(tmp) / "run" / "metrics.json")
    busy = m["step_seconds"] + m["overhead_seconds"]
    return Row(
        setting=setting_label(cfg),
        learner=cfg.learner.name,
        episodes=int(m["episodes_done"]),
        meta_batch=cfg.train.meta_batch,
        step_seconds=float(m["step_seconds"]),
        overhead_seconds=float(m["overhead_seconds"]),
        episodes_per_second=float(m["episodes_done"]) / busy,
        steps_per_second=float(m["episodes_done"]) / cfg.train.meta_batch / busy,
        overhead_fraction=float(m["overhead_seconds"]) / busy,
    )


def run(
    *, protonet_episodes: int = 600, maml_episodes: int = 640, warmup_steps: int = 2, data_root: str | None = None
) -> list[Row]:
    """Measure every setting of :data:`SETTINGS`; episode counts are rounded up to whole meta-batches."""
    if protonet_episodes < 1 or maml_episodes < 1 or warmup_steps < 0:
        raise ValueError(
            f"episode counts must be >= 1 and warmup >= 0, got protonet {protonet_episodes}, maml {maml_episodes}, "
            f"warmup {warmup_steps}"
        )
    rows = []
    for setting in SETTINGS:
        cfg = setting.resolve()
        meta_batch = cfg.train.meta_batch
        wanted = protonet_episodes if cfg.learner.name == "protonet" else maml_episodes
        episodes = -(-wanted // meta_batch) * meta_batch
        rows.append(_measure(setting, episodes, warmup_steps * meta_batch, data_root))
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """Human-readable table, one line per setting."""
    lines = [f"{'setting':60} {'episodes':>8} {'ep/s':>8} {'steps/s':>8} {'step s':>8} {'other s':>8} {'other %':>8}"]
    for r in rows:
        lines.append(
            f"{r.setting:60} {r.episodes:8d} {r.episodes_per_second:8.2f} {r.steps_per_second:8.3f} "
            f"{r.step_seconds:8.1f} {r.overhead_seconds:8.2f} {100 * r.overhead_fraction:8.2f}"
        )
    return "\n".join(lines)


def to_csv(rows: Sequence[Row], env: dict[str, str], command: str) -> str:
    """CSV text: comment lines with the command and the environment, then one row per setting."""
    formats = {"episodes_per_second": ".3f", "steps_per_second": ".3f", "overhead_fraction": ".4f"}
    return rows_to_csv(rows, Row, env, command, formats)


def write_csv(rows: Sequence[Row], path: Path, env: dict[str, str], command: str, force: bool = False) -> Path:
    """Write :func:`to_csv` to ``path`` atomically; never replaces an existing file unless ``force``."""
    return write_result(path, to_csv(rows, env, command), force=force)
