"""Distributed meta-steps: 2 ranks × 1 thread against 1 process × 2 threads, and the bytes each step sends.

``python run_episode.py bench distributed [--steps 5] [--rounds 2] [--write]``. For each configuration (ProtoNet
Conv-4 with BN and with SWBN, second-order MAML Conv-4 with BN; Omniglot-shaped 5-way 1-shot 15-query synthetic
episodes, meta-batch 4) it times the trainer's meta-step (``meta_loss``, ``backward``, gradient all-reduce, norm
statistics gather, ``Adam.step``; :mod:`fewshot.training.meta_step_sync`) in two setups, one after the other and
repeated ``rounds`` times (A B A B) so that a change of machine load hits both:

* ``1x2``: one process, ``torch.set_num_threads(2)``, the whole meta-batch;
* ``2x1``: two processes (gloo on 127.0.0.1, one thread each), two episodes each;
* ``1x1``: one process, one thread, the whole meta-batch (the reference both speed-ups are read against).

Reported: the median seconds per meta-step of each setup (rank 0's clock; a step ends when its all-reduce has
heard from both ranks), the ratio 1x2 / 2x1 and each setup's speed-up over 1x1, and the bytes each rank sent per
step by collective (gradients all-reduced, norm statistics all-gathered, the metrics and stop votes), counted at
the calls. Episodes are uniform [0, 1) images: a step's cost does not depend on pixel values.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.multiprocessing as mp

from benchmarks._results import environment, rows_to_csv, write_result

__all__ = ["CONFIGS", "DistRow", "environment", "format_table", "run", "to_csv", "write_csv"]

N_WAY, N_SHOT, N_QUERY, META_BATCH, IMAGE = 5, 1, 15, 4, (1, 28, 28)
#: name → (learner, backbone, norm)
CONFIGS = {
    "protonet-conv4-batchnorm": ("protonet", "conv4", "batchnorm"),
    "protonet-conv4-swbn": ("protonet", "conv4", "swbn"),
    "maml2-conv4-batchnorm": ("maml", "conv4_maml", "batchnorm"),
}


@dataclass
class DistRow:
    """One configuration: seconds per meta-step in both setups, their ratio and the bytes sent per step."""

    config: str
    meta_batch: int
    steps: int
    rounds: int
    seconds_1x1: float
    seconds_1x2: float
    seconds_2x1: float
    speedup_2x1: float
    speedup_1x2_over_1x1: float
    speedup_2x1_over_1x1: float
    grad_bytes: int
    stats_bytes: int
    other_bytes: int


@dataclass
class _Counter:
    bytes: dict[str, int] = field(default_factory=lambda: {"grad": 0, "stats": 0, "other": 0})


def _learner(config: str) -> torch.nn.Module:
    import fewshot.backbones as backbones
    from fewshot.learners.maml import MAML
    from fewshot.learners.protonet import ProtoNet

    kind, backbone, norm = CONFIGS[config]
    torch.manual_seed(0)
    net = backbones.create(backbone, in_channels=IMAGE[0], norm=norm)
    if kind == "protonet":
        return ProtoNet(net, norm_state_update="meta_batch")
    return MAML(net, n_way=N_WAY, image_size=IMAGE[1], inner_steps=1)


def _episodes(start: int, count: int) -> list:
    from episodes.episode import Episode

    out = []
    for i in range(start, start + count):
        g = torch.Generator().manual_seed(i)
        ns, nq = N_WAY * N_SHOT, N_WAY * N_QUERY
        out.append(Episode(
            torch.rand(ns, *IMAGE, generator=g), torch.arange(N_WAY).repeat_interleave(N_SHOT),
            torch.rand(nq, *IMAGE, generator=g), torch.arange(N_WAY).repeat_interleave(N_QUERY),
            tuple(f"c{k}" for k in range(N_WAY)), tuple(f"s{k}" for k in range(ns)),
            tuple(f"q{k}" for k in range(nq)), i,
        ))  # fmt: skip
    return out


def _counting(dist, counter: _Counter):  # noqa: ANN001, ANN202 - a Distributed and its byte-counting twin
    """``dist`` whose collectives add the bytes they send to ``counter`` (by kind, from the operation's name)."""
    from fewshot.training.distributed import Distributed

    class Counting(Distributed):
        def all_reduce_sum_(self, tensor, what="all_reduce"):  # noqa: ANN001, ANN202
            kind = "grad" if "gradients" in what else "other"
            counter.bytes[kind] += tensor.numel() * tensor.element_size()
            return super().all_reduce_sum_(tensor, what)

        def all_gather(self, tensor, what="all_gather"):  # noqa: ANN001, ANN202
            counter.bytes["stats" if "statistics" in what else "other"] += tensor.numel() * tensor.element_size()
            return super().all_gather(tensor, what)

    return Counting(dist.rank, dist.world_size, dist.local_rank, dist.backend, dist.device)


def _time_steps(config: str, dist, steps: int, counter: _Counter) -> list[float]:  # noqa: ANN001
    """Seconds of ``1 + steps`` meta-steps (the first untimed) as the trainer takes them, on ``dist``'s share."""
    from fewshot.learners.base import syncing_norm_stats
    from fewshot.training.meta_step_sync import (
        NormStatsSync,
        average_gradients,
        local_episodes,
        mean_over_ranks,
    )

    learner = _learner(config)
    optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
    times = []
    for step in range(1 + steps):
        if step == 1:
            counter.bytes = {k: 0 for k in counter.bytes}  # count the timed steps only
        share = local_episodes(step * META_BATCH, META_BATCH, dist)
        batch = _episodes(share.start, len(share))
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with syncing_norm_stats(NormStatsSync(dist) if dist.active else None):
            loss, metrics = learner.meta_loss(batch, policy="running")
        mean_over_ranks(metrics, dist)
        loss.backward()
        average_gradients(learner.parameters(), dist)
        optimizer.step()
        if step:
            times.append(time.perf_counter() - t0)
    return times


def _rank(rank: int, world: int, port: int, config: str, steps: int, out: mp.Queue) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))  # fmt: skip
    torch.set_num_threads(1)
    from fewshot.training.distributed import from_env, shutdown

    dist = from_env("cpu")
    counter = _Counter()
    try:
        times = _time_steps(config, _counting(dist, counter), steps, counter)
    finally:
        shutdown(dist)
    if rank == 0:
        out.put((times, {k: v // steps for k, v in counter.bytes.items()}))


def _two_ranks(config: str, steps: int) -> tuple[list[float], dict[str, int]]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    mp.start_processes(_rank, args=(2, port, config, steps, queue), nprocs=2, join=True, start_method="spawn")
    return queue.get(timeout=60)


def run(*, steps: int = 5, rounds: int = 2, only: list[str] | None = None) -> list[DistRow]:
    """Measure every configuration of :data:`CONFIGS` (or ``only``) in both setups, A B A B."""
    from fewshot.training.distributed import SINGLE

    unknown = sorted(set(only or []) - set(CONFIGS))
    if unknown:
        raise ValueError(f"unknown configuration(s) {unknown}; choose from {sorted(CONFIGS)}")
    if steps < 1 or rounds < 1:
        raise ValueError(f"--steps and --rounds must be >= 1, got {steps} and {rounds}")
    rows = []
    previous = torch.get_num_threads()
    try:
        for config in only or list(CONFIGS):
            one, single, double, sent = [], [], [], {}
            for _ in range(rounds):
                torch.set_num_threads(1)
                one += _time_steps(config, SINGLE, steps, _Counter())
                torch.set_num_threads(2)
                single += _time_steps(config, SINGLE, steps, _Counter())
                times, sent = _two_ranks(config, steps)
                double += times
            r, a, b = statistics.median(one), statistics.median(single), statistics.median(double)
            rows.append(DistRow(config, META_BATCH, steps, rounds, r, a, b, a / b, r / a, r / b, sent["grad"],
                                sent["stats"], sent["other"]))  # fmt: skip
    finally:
        torch.set_num_threads(previous)
    return rows


def format_table(rows: list[DistRow]) -> str:
    """One line per configuration."""
    lines = [f"{'config':26} {'mb':>3} {'1x1 s':>7} {'1x2 s':>7} {'2x1 s':>7} {'1x2/2x1':>7} {'1x2 vs 1x1':>10} "
             f"{'2x1 vs 1x1':>10} {'grad B':>9} {'stats B':>8} {'other B':>7}"]  # fmt: skip
    for r in rows:
        lines.append(
            f"{r.config:26} {r.meta_batch:3d} {r.seconds_1x1:7.3f} {r.seconds_1x2:7.3f} {r.seconds_2x1:7.3f} "
            f"{r.speedup_2x1:7.2f} {r.speedup_1x2_over_1x1:10.2f} {r.speedup_2x1_over_1x1:10.2f} "
            f"{r.grad_bytes:9d} {r.stats_bytes:8d} {r.other_bytes:7d}"
        )
    return "\n".join(lines)


def to_csv(rows: list[DistRow], env: dict[str, str], command: str) -> str:
    """CSV text: the command and environment lines, then one row per configuration."""
    return rows_to_csv(
        rows,
        DistRow,
        env,
        command,
        {
            "seconds_1x1": ".4f",
            "seconds_1x2": ".4f",
            "seconds_2x1": ".4f",
            "speedup_2x1": ".3f",
            "speedup_1x2_over_1x1": ".3f",
            "speedup_2x1_over_1x1": ".3f",
        },
    )


def write_csv(rows: list[DistRow], path: Path, env: dict[str, str], command: str, force: bool = False) -> Path:
    """Write :func:`to_csv` to ``path`` atomically; never replaces an existing file unless ``force``."""
    return write_result(path, to_csv(rows, env, command), force=force)
