"""Time and peak memory of one MAML meta-step for every MAML experiment file, first and second order, tasks in a
Python loop and under ``torch.func.vmap``.

``python run_episode.py bench maml [--steps 3] [--tasks loop,vmap] [--write]``. For each ``configs/maml/*.yaml``,
each order and each task mode (``loop``: ``learner.kwargs.vmap_tasks=false``; ``vmap``: ``=true``), a
fresh child process (so that its peak resident memory is its own) builds the learner exactly as the trainer
does (backbone, norm, inner steps and rate, meta-batch, memory format of the file), takes ``1 + steps``
meta-steps (``zero_grad``, ``meta_loss``, ``backward``, ``Adam.step``; the first untimed) on synthetic episodes of
the file's shape, and reports the median seconds per meta-step and the peak resident memory above the memory
held before the first step (``ru_maxrss``: model, optimizer state and activations of the meta-step; the
allocator's cached pages included, so with ``run_episode.py``'s malloc tunables this is the high-water mark).

Synthetic episodes: uniform [0, 1) images of the dataset's shape (Omniglot 1×28×28, miniImageNet 3×S×S with
``S = data.options.image_size``); a meta-step's cost does not depend on pixel values, and no dataset is loaded.
Configurations run one after the other, not interleaved: compare rows of one run on an otherwise idle machine.
A vmap row's ``speed_vs_loop`` is the loop's seconds per meta-step over its own and ``memory_vs_loop`` its peak
over the loop's (same config and order, same run); both are NaN on loop rows and where the loop was not measured.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks._results import environment, rows_to_csv, write_result

__all__ = [
    "TASK_MODES",
    "MamlRow",
    "configs",
    "environment",
    "format_table",
    "measure_one",
    "run",
    "to_csv",
    "with_ratios",
    "write_csv",
]

REPO = Path(__file__).resolve().parents[1]
TASK_MODES = ("loop", "vmap")  # how a meta-step runs its tasks: a Python loop, or one torch.func.vmap


@dataclass
class MamlRow:
    """One MAML configuration, order and task mode: its shape, the measured time and memory per meta-step, and
    (vmap rows) both as ratios to the loop row of the same configuration and order."""

    config: str
    n_way: int
    n_shot: int
    n_query: int
    meta_batch: int
    inner_steps: int
    order: str
    tasks: str
    backbone: str
    image_shape: str
    steps: int
    seconds_per_step: float
    peak_mb: float
    speed_vs_loop: float = float("nan")
    memory_vs_loop: float = float("nan")


def configs() -> list[str]:
    """The MAML experiment files, relative to the repository root."""
    return sorted(str(p.relative_to(REPO)) for p in (REPO / "configs" / "maml").glob("*.yaml"))


def _image_shape(cfg) -> tuple[int, int, int]:  # noqa: ANN001 - an ExperimentConfig
    dataset = cfg.data.dataset
    if dataset == "omniglot":
        side = int(cfg.data.options.get("image_size", 28))
        return (1, side, side)
    if dataset == "miniimagenet":
        side = int(cfg.data.options.get("image_size", 84))
        return (3, side, side)
    raise ValueError(f"bench maml knows the image shapes of omniglot and miniimagenet, got dataset {dataset!r}")


def _episode(n_way: int, n_shot: int, n_query: int, shape: tuple[int, int, int], seed: int):  # noqa: ANN202
    from episodes.episode import Episode

    g = torch.Generator().manual_seed(seed)
    sx, qx = torch.rand(n_way * n_shot, *shape, generator=g), torch.rand(n_way * n_query, *shape, generator=g)
    sy, qy = torch.arange(n_way).repeat_interleave(n_shot), torch.arange(n_way).repeat_interleave(n_query)
    return Episode(sx, sy, qx, qy, class_ids=tuple(f"c{i}" for i in range(n_way)),
                   support_ids=tuple(map(str, range(len(sy)))), query_ids=tuple(map(str, range(len(qy)))),
                   index=seed)  # fmt: skip


def _rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _check_tasks(tasks: str) -> str:
    if tasks not in TASK_MODES:
        raise ValueError(
            f"bench maml --tasks takes a comma list of {', '.join(TASK_MODES)}, got {tasks!r}; 'loop' runs the "
            "meta-batch's tasks in a Python loop, 'vmap' under torch.func.vmap (learner.kwargs.vmap_tasks=true)"
        )
    return tasks


def measure_one(config: str, first_order: bool, steps: int, tasks: str = "loop") -> MamlRow:
    """Measure one configuration in this process (the child side of :func:`run`).

    ``tasks`` (``"loop"`` or ``"vmap"``) sets ``learner.kwargs.vmap_tasks``; the row's ``tasks`` is read back
    from the built learner, so it says how the measured meta-steps ran their tasks.
    """
    from fewshot.config import load_config
    from fewshot.training.build import build_learner

    order = "1st" if first_order else "2nd"
    overrides = [
        f"learner.kwargs.first_order={str(first_order).lower()}",
        f"learner.kwargs.vmap_tasks={str(_check_tasks(tasks) == 'vmap').lower()}",
    ]
    cfg = load_config(REPO / config, overrides)
    t = cfg.train
    shape = _image_shape(cfg)
    torch.manual_seed(cfg.seed)
    learner = build_learner(cfg, t.n_way, shape)
    optimizer = torch.optim.Adam(learner.parameters(), lr=t.lr)
    batches = [
        [_episode(t.n_way, t.n_shot, t.n_query, shape, s * t.meta_batch + j) for j in range(t.meta_batch)]
        for s in range(steps + 1)
    ]
    before = _rss_mb()
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = learner.meta_loss(batch, policy=t.norm_policy)
        loss.backward()
        optimizer.step()
        times.append(time.perf_counter() - t0)
    times = sorted(times[1:])
    return MamlRow(
        config=config, n_way=t.n_way, n_shot=t.n_shot, n_query=t.n_query, meta_batch=t.meta_batch,
        inner_steps=learner.inner_steps, order=order, tasks="vmap" if learner.vmap_tasks else "loop",
        backbone=cfg.model.backbone,
        image_shape="x".join(map(str, shape)), steps=steps, seconds_per_step=times[len(times) // 2],
        peak_mb=_rss_mb() - before,
    )  # fmt: skip


def with_ratios(rows: list[MamlRow]) -> list[MamlRow]:
    """Fill each vmap row's ``speed_vs_loop`` (loop s/step / its s/step) and ``memory_vs_loop`` (its peak MB /
    the loop's) from the loop row of the same config and order in ``rows``; NaN on loop rows and without one."""
    loops = {(r.config, r.order): r for r in rows if r.tasks == "loop"}
    for r in rows:
        loop = loops.get((r.config, r.order)) if r.tasks != "loop" else None
        r.speed_vs_loop = loop.seconds_per_step / r.seconds_per_step if loop else math.nan
        r.memory_vs_loop = r.peak_mb / loop.peak_mb if loop and loop.peak_mb > 0 else math.nan
    return rows


def run(*, steps: int = 3, only: list[str] | None = None, tasks: list[str] | None = None) -> list[MamlRow]:
    """Every MAML config (or those in ``only``) × second/first order × task mode (``tasks``: any of
    :data:`TASK_MODES`, default both), each in a fresh child process; vmap rows get their ratios to the loop."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    modes = [_check_tasks(m) for m in (tasks or TASK_MODES)]
    if len(set(modes)) != len(modes):
        raise ValueError(f"bench maml --tasks lists a mode twice: {','.join(modes)}; give each of loop, vmap once")
    rows = []
    for config in only or configs():
        for first_order in (False, True):
            for mode in modes:
                code = (
                    "import json, dataclasses, benchmarks.bench_maml as b; print(json.dumps(dataclasses.asdict("
                    f"b.measure_one({config!r}, {first_order}, {steps}, {mode!r}))))"
                )
                out = subprocess.run(
                    [sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                    capture_output=True, text=True, check=False,
                )  # fmt: skip
                if out.returncode != 0:
                    raise RuntimeError(
                        f"bench maml: {config} (first_order={first_order}, tasks={mode}) failed with exit code "
                        f"{out.returncode}:\n{out.stderr[-2000:]}"
                    )
                rows.append(MamlRow(**json.loads(out.stdout.strip().splitlines()[-1])))
    return with_ratios(rows)


def format_table(rows: list[MamlRow]) -> str:
    """Human-readable table, one line per configuration, order and task mode."""
    lines = [
        f"{'config':40} {'task':>9} {'mb':>3} {'inner':>5} {'order':>5} {'tasks':>5} {'s/step':>8} {'peak MB':>8} "
        f"{'speed_vs_loop':>13} {'memory_vs_loop':>14}"
    ]
    for r in rows:
        task = f"{r.n_way}w{r.n_shot}s{r.n_query}q"
        lines.append(
            f"{r.config:40} {task:>9} {r.meta_batch:3d} {r.inner_steps:5d} {r.order:>5} {r.tasks:>5} "
            f"{r.seconds_per_step:8.2f} {r.peak_mb:8.0f} {r.speed_vs_loop:13.2f} {r.memory_vs_loop:14.2f}"
        )
    return "\n".join(lines)


def to_csv(rows: list[MamlRow], env: dict[str, str], command: str) -> str:
    """CSV text: the command and environment lines, then one row per configuration, order and task mode."""
    formats = {"seconds_per_step": ".3f", "peak_mb": ".0f", "speed_vs_loop": ".2f", "memory_vs_loop": ".2f"}
    return rows_to_csv(rows, MamlRow, env, command, formats)


def write_csv(rows: list[MamlRow], path: Path, env: dict[str, str], command: str, force: bool = False) -> Path:
    """Write :func:`to_csv` to ``path`` atomically; never replaces an existing file unless ``force``."""
    return write_result(path, to_csv(rows, env, command), force=force)
