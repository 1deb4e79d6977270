"""Time and peak memory of one MAML meta-step for every MAML experiment file, first and second order.

``python run_episode.py bench maml [--steps 3] [--write]``. For each ``configs/maml/*.yaml`` and each order, a
fresh child process (so that its peak resident memory is its own) builds the learner exactly as the trainer
does (backbone, norm, inner steps and rate, meta-batch, memory format of the file), takes ``1 + steps``
meta-steps (``zero_grad``, ``meta_loss``, ``backward``, ``Adam.step``; the first untimed) on synthetic episodes of
the file's shape, and reports the median seconds per meta-step and the peak resident memory above the memory
held before the first step (``ru_maxrss``: model, optimizer state and activations of the meta-step; the
allocator's cached pages included, so with ``run_episode.py``'s malloc tunables this is the high-water mark).

Synthetic episodes: uniform [0, 1) images of the dataset's shape (Omniglot 1×28×28, miniImageNet 3×S×S with
``S = data.options.image_size``); a meta-step's cost does not depend on pixel values, and no dataset is loaded.
Configurations run one after the other, not interleaved: compare rows of one run on an otherwise idle machine.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks._results import environment, rows_to_csv, write_result

__all__ = ["MamlRow", "configs", "environment", "format_table", "measure_one", "run", "to_csv", "write_csv"]

REPO = Path(__file__).resolve().parents[1]


@dataclass
class MamlRow:
    """One MAML configuration and order: its shape and the measured time and memory per meta-step."""

    config: str
    n_way: int
    n_shot: int
    n_query: int
    meta_batch: int
    inner_steps: int
    order: str
    backbone: str
    image_shape: str
    steps: int
    seconds_per_step: float
    peak_mb: float


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


def measure_one(config: str, first_order: bool, steps: int) -> MamlRow:
    """Measure one configuration in this process (the child side of :func:`run`)."""
    from fewshot.config import load_config
    from fewshot.training.build import build_learner

    order = "1st" if first_order else "2nd"
    cfg = load_config(REPO / config, [f"learner.kwargs.first_order={str(first_order).lower()}"])
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
        inner_steps=learner.inner_steps, order=order, backbone=cfg.model.backbone,
        image_shape="x".join(map(str, shape)), steps=steps, seconds_per_step=times[len(times) // 2],
        peak_mb=_rss_mb() - before,
    )  # fmt: skip


def run(*, steps: int = 3, only: list[str] | None = None) -> list[MamlRow]:
    """Every MAML config (or those in ``only``) × first/second order, each in a fresh child process."""
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    rows = []
    for config in only or configs():
        for first_order in (False, True):
            code = (
                "import json, dataclasses, benchmarks.bench_maml as b; "
                f"print(json.dumps(dataclasses.asdict(b.measure_one({config!r}, {first_order}, {steps}))))"
            )
            out = subprocess.run(
                [sys.executable, "-c", code], cwd=REPO, env=dict(os.environ, PYTHONPATH=str(REPO)),
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(f"bench maml: {config} (first_order={first_order}) failed:\n{out.stderr[-2000:]}")
            rows.append(MamlRow(**json.loads(out.stdout.strip().splitlines()[-1])))
    return rows


def format_table(rows: list[MamlRow]) -> str:
    """Human-readable table, one line per configuration and order."""
    lines = [f"{'config':40} {'task':>9} {'mb':>3} {'inner':>5} {'order':>5} {'s/step':>8} {'peak MB':>8}"]
    for r in rows:
        task = f"{r.n_way}w{r.n_shot}s{r.n_query}q"
        lines.append(
            f"{r.config:40} {task:>9} {r.meta_batch:3d} {r.inner_steps:5d} {r.order:>5} {r.seconds_per_step:8.2f} "
            f"{r.peak_mb:8.0f}"
        )
    return "\n".join(lines)


def to_csv(rows: list[MamlRow], env: dict[str, str], command: str) -> str:
    """CSV text: the command and environment lines, then one row per configuration and order."""
    return rows_to_csv(rows, MamlRow, env, command, {"seconds_per_step": ".3f", "peak_mb": ".0f"})


def write_csv(rows: list[MamlRow], path: Path, env: dict[str, str], command: str, force: bool = False) -> Path:
    """Write :func:`to_csv` to ``path`` atomically; never replaces an existing file unless ``force``."""
    return write_result(path, to_csv(rows, env, command), force=force)
