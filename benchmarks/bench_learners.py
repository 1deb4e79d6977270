#!/usr/bin/env python
"""Time one meta-training step of the learners on synthetic Omniglot-sized episodes, and print ratios.

    python benchmarks/bench_learners.py [--repeats 5] [--warmup 2] [--threads 2]

A step is ``meta_loss`` + ``backward`` + an Adam step, on random images (the content does not change the cost).
All settings are built first, warmed up (``--warmup`` rounds), then run round-robin ``--repeats`` times with the
order rotated every round, so that load drifts on a shared machine hit every setting alike; the medians of wall
time and process CPU time are printed with the wall-time ratio to the first setting of each group. Settings:

* MAML, Omniglot 5-way 1-shot (configs/maml/omniglot_vinyals_5w1s.yaml): conv4_maml + BatchNorm, 28×28,
  meta-batch 32, 1 inner step (lr 0.4), norm policy batch; 1 query per class as in the config and 15 as in
  docs/cpu-performance.md; variants first-order and ANIL.
* ProtoNet, Omniglot 60-way 1-shot 5-query (configs/protonet/omniglot_vinyals_1shot.yaml): conv4 + BatchNorm,
  policy running, with and without channels-last; and the time of 600 evaluation episodes (``predict``, 5-way
  1-shot 15-query, policy running), extrapolated from 20.

Like run_episode.py, the script re-executes itself once with the glibc malloc tunables unless GLIBC_TUNABLES
is set or --no-reexec is given. Absolute times depend on the machine and its load (printed); the ratios,
measured side by side in one process, are what carry over.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from run_episode import MALLOC_TUNABLES  # noqa: E402

MAML_REF = "MAML 2nd order, Omniglot 5w1s 1 query/class, meta-batch 32, 1 step"
PROTO_REF = "ProtoNet step, Omniglot 60w1s5q, conv4"
EVAL_REF = "ProtoNet 600 eval episodes 5w1s15q (running)"
EVAL_EPISODES = 20


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds before timing")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: all cores)")
    parser.add_argument("--no-reexec", action="store_true", help="do not re-execute with the malloc tunables")
    return parser.parse_args(argv)


def _episode(n_way: int, n_shot: int, n_query: int, size: int = 28, seed: int = 0):
    import torch

    from episodes.episode import Episode

    g = torch.Generator().manual_seed(seed)
    sy = torch.arange(n_way).repeat_interleave(n_shot)
    qy = torch.arange(n_way).repeat_interleave(n_query)
    return Episode(
        torch.rand(n_way * n_shot, 1, size, size, generator=g), sy,
        torch.rand(n_way * n_query, 1, size, size, generator=g), qy,
        tuple(f"c{i}" for i in range(n_way)), tuple(map(str, range(len(sy)))), tuple(map(str, range(len(qy)))), seed,
    )  # fmt: skip


def _train_step(learner, episodes, policy: str) -> Callable[[], None]:
    import torch

    opt = torch.optim.Adam(learner.parameters(), lr=1e-3)

    def step() -> None:
        loss, _ = learner.meta_loss(episodes, policy=policy)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    if not args.no_reexec and not os.environ.get("GLIBC_TUNABLES") and sys.platform.startswith("linux"):
        env = dict(os.environ, GLIBC_TUNABLES=MALLOC_TUNABLES)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *sys.argv[1:]], env)

    import torch

    from fewshot import backbones, learners

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tunables = "set" if os.environ.get("GLIBC_TUNABLES") else "unset"
    print(
        f"torch {torch.__version__}, threads {torch.get_num_threads()}, GLIBC_TUNABLES {tunables}, loadavg before "
        f"{os.getloadavg()[0]:.2f}, median of {args.repeats} steps after {args.warmup} warm-ups"
    )

    def maml(n_query: int, **kwargs) -> Callable[[], None]:
        backbone = backbones.create("conv4_maml", in_channels=1, norm="batchnorm")
        learner = learners.create("maml", backbone, n_way=5, image_size=28, inner_lr=0.4, inner_steps=1, **kwargs)
        return _train_step(learner, [_episode(5, 1, n_query, seed=s) for s in range(32)], "transductive")

    def protonet(channels_last: bool) -> tuple[Callable[[], None], Callable[[], None]]:
        learner = learners.create("protonet", backbones.create("conv4", in_channels=1), channels_last=channels_last)
        if channels_last:
            learner = learner.to(memory_format=torch.channels_last)
        test = [_episode(5, 1, 15, seed=s) for s in range(EVAL_EPISODES)]
        return _train_step(learner, [_episode(60, 1, 5)], "running"), lambda: [learner.predict(ep) for ep in test]

    proto_plain, eval_plain = protonet(False)
    proto_fast, eval_fast = protonet(True)
    # (label, step, reference label for the ratio, scale applied to the time)
    configs: list[tuple[str, Callable[[], None], str, float]] = [
        (MAML_REF, maml(1), MAML_REF, 1.0),
        ("MAML 2nd order, 15 queries/class", maml(15), MAML_REF, 1.0),
        ("MAML 1st order, 1 query/class", maml(1, first_order=True), MAML_REF, 1.0),
        ("ANIL 2nd order, 1 query/class", maml(1, anil=True), MAML_REF, 1.0),
        (PROTO_REF, proto_plain, PROTO_REF, 1.0),
        ("ProtoNet step, same, channels_last", proto_fast, PROTO_REF, 1.0),
        (EVAL_REF, eval_plain, EVAL_REF, 600 / EVAL_EPISODES),
        ("ProtoNet 600 eval episodes, channels_last", eval_fast, EVAL_REF, 600 / EVAL_EPISODES),
    ]
    for _ in range(args.warmup):
        for _, step, _, _ in configs:
            step()
    wall: dict[str, list[float]] = {c[0]: [] for c in configs}
    cpu: dict[str, list[float]] = {c[0]: [] for c in configs}
    for r in range(args.repeats):  # round-robin, order rotated every repeat: load drifts hit all alike
        for label, step, _, scale in configs[r % len(configs) :] + configs[: r % len(configs)]:
            w0, c0 = time.perf_counter(), time.process_time()
            step()
            wall[label].append((time.perf_counter() - w0) * scale)
            cpu[label].append((time.process_time() - c0) * scale)

    med = {label: statistics.median(v) for label, v in wall.items()}
    med_cpu = {label: statistics.median(v) for label, v in cpu.items()}
    width = max(len(c[0]) for c in configs)
    print(f"{'setting':<{width}}  {'wall s':>8}  {'cpu s':>8}  wall ratio")
    for label, _, ref, _ in configs:
        ratio = "1.00 (reference)" if label == ref else f"{med[label] / med[ref]:.2f} x {ref.split(',')[0]}"
        print(f"{label:<{width}}  {med[label]:8.3f}  {med_cpu[label]:8.3f}  {ratio}")
    print(f"loadavg after {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
