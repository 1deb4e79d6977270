"""``bench device``: the trainer's step against a plain loop on the same device, interleaved in one process.

The questions of issue 20, asked of any device (CUDA or CPU): how fast is a fewshot training step next to the
loop a user would write with plain torch layers, on the same device, the same synthetic uint8 data and the
same episodes?

* ProtoNet Conv-4: ``trainer`` = the body of ``fewshot.training.trainer._Trainer._step`` (the episode built by
  the trainer's sampler, on the device when it is a GPU; ``meta_loss`` under the config's precision;
  backward; Adam), with BN and SWBN; ``plain`` = :class:`benchmarks.reference_loops.ReferenceProtoNet`
  (``nn.Sequential`` Conv-4 with ``nn.BatchNorm2d``, channels-last, Adam) on the same episode indices
  gathered from the same uint8 tensor on the device and divided by 255. Two shapes: Omniglot 60-way 1-shot
  5-query (28x28x1) and miniImageNet-size 20-way 1-shot 15-query (84x84x3).
* Second-order MAML (Conv-4 with 32 filters, 84x84x3, 5-way 1-shot 15-query, 5 inner steps, meta-batch 4,
  batch statistics): ``trainer`` = fewshot's MAML from ``configs/maml/miniimagenet_5w1s.yaml``; ``plain`` =
  :class:`benchmarks.reference_loops.ReferenceMAML` (``torch.func.functional_call``, ``create_graph=True``).

Rounds interleave every variant (``--rounds`` rounds of ``--steps`` steps each, after ``--warmup`` steps), so
that a device's clock or a loaded machine affects all of them alike; the time of a block is taken after
``torch.cuda.synchronize`` on a GPU. Reported per variant: the median steps per second over the rounds, and
the ratio ``trainer / plain`` (>= 1: fewshot is as fast as the plain loop) and ``SWBN / BN`` (time ratio).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from benchmarks._results import environment as _environment
from benchmarks._results import rows_to_csv, write_result
from benchmarks.reference_loops import ReferenceMAML, ReferenceProtoNet
from episodes.episode import Episode
from episodes.sampler import EpisodeSampler
from episodes.split import ClassSplit

__all__ = ["CASES", "DeviceRow", "environment", "format_table", "run", "to_csv", "write_csv"]

#: case name -> (learner, norm, n_way, n_shot, n_query, (C, H, W), meta_batch)
CASES: dict[str, tuple[str, str, int, int, int, tuple[int, int, int], int]] = {
    "protonet_bn_omniglot_60w1s5q": ("protonet", "batchnorm", 60, 1, 5, (1, 28, 28), 1),
    "protonet_swbn_omniglot_60w1s5q": ("protonet", "swbn", 60, 1, 5, (1, 28, 28), 1),
    "protonet_bn_mini_20w1s15q": ("protonet", "batchnorm", 20, 1, 15, (3, 84, 84), 1),
    "protonet_swbn_mini_20w1s15q": ("protonet", "swbn", 20, 1, 15, (3, 84, 84), 1),
    "maml2_bn_mini_5w1s15q": ("maml", "batchnorm", 5, 1, 15, (3, 84, 84), 4),
}


@dataclass
class DeviceRow:
    """One variant: steps (ProtoNet episodes or MAML meta-steps) per second, median over the rounds."""

    device: str
    gpu: str
    case: str
    variant: str  # trainer | plain
    precision: str
    steps_per_second: float
    ratio_to_plain: float  # steps/s of this variant / steps/s of the plain loop of the case (1 for plain)
    swbn_over_bn: float | None  # time of the SWBN trainer step / time of the BN trainer step of the shape


def environment(device: torch.device | None = None) -> dict[str, str]:
    """The benchmark environment plus the device's facts (GPU model, CUDA, cuDNN, driver)."""
    from fewshot.device import device_facts, run_device

    env = _environment()
    for k, v in device_facts(device or run_device("auto")).items():
        env[k] = str(v)
    return env


def synthetic_split(n_classes: int, per_class: int, shape: tuple[int, int, int], seed: int = 0) -> ClassSplit:
    """A split of random uint8 images ``(n, H, W)`` (grey) or ``(n, H, W, C)``, ``per_class`` per class."""
    c, h, w = shape
    rng = np.random.default_rng(seed)
    size = (n_classes * per_class, h, w) if c == 1 else (n_classes * per_class, h, w, c)
    images = rng.integers(0, 256, size, dtype=np.uint8)
    names = [f"class{i:04d}" for i in range(n_classes)]
    class_images = [np.arange(i * per_class, (i + 1) * per_class, dtype=np.int64) for i in range(n_classes)]
    ids = [f"class{r // per_class:04d}/{r % per_class:03d}" for r in range(len(images))]
    return ClassSplit(
        "synthetic", f"{c}x{h}x{w}", "train", images, ids, names, class_images, np.zeros(n_classes, np.int64),
        ["all"] * n_classes, f"synthetic-{seed}",
    )  # fmt: skip


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _cases(
    names: list[str], device: torch.device, precision: str, per_class: int
) -> list[tuple[str, str, Callable[[int], None]]]:
    """(case, variant, step(i)) for every case: the trainer's step and the plain loop's step on episode ``i``."""
    from fewshot.config import load_config
    from fewshot.numerics import autocast, set_precision
    from fewshot.training.build import build_learner

    set_precision(precision)
    out = []
    splits: dict[tuple[int, int, int], ClassSplit] = {}
    for name in names:
        learner_name, norm, way, shot, query, shape, mb = CASES[name]
        if shape not in splits:
            splits[shape] = synthetic_split(max(64, way), max(per_class, shot + query), shape)
        split = splits[shape]
        sampler = EpisodeSampler(split, way, shot, query, seed=0).to(device)
        images = torch.from_numpy(split.images).to(device)  # the plain loop's own copy of the uint8 data
        if learner_name == "maml":
            cfg = load_config("configs/maml/miniimagenet_5w1s.yaml", [f"norm={norm}", "data.normalize=null"])
        else:
            cfg = load_config(None, [f"norm={norm}", f"train.n_way={way}", f"train.n_query={query}"])
        torch.manual_seed(0)
        learner = build_learner(cfg, way, shape).to(device)
        optimizer = torch.optim.Adam(learner.parameters(), lr=1e-3)
        policy = cfg.train.norm_policy

        def trainer_step(i: int, learner=learner, optimizer=optimizer, sampler=sampler, mb=mb, policy=policy):  # noqa: ANN001
            batch = [sampler[i * mb + j] for j in range(mb)]  # the trainer's _step, line by line
            optimizer.zero_grad(set_to_none=True)
            with autocast(precision, device):
                loss, _ = learner.meta_loss(batch, policy=policy)
            loss.backward()
            optimizer.step()

        out.append((name, "trainer", trainer_step))
        if norm != "batchnorm":
            continue  # the plain loop is BN: one per shape
        if learner_name == "maml":
            plain = ReferenceMAML(
                shape[0], way, image_size=shape[1], hidden=32, inner_lr=0.01, inner_steps=5, device=device
            )

            def plain_step(i: int, plain=plain, sampler=sampler, images=images, mb=mb) -> None:  # noqa: ANN001
                plain.train_step([_plain_episode(sampler, images, i * mb + j) for j in range(mb)])
        else:
            plain = ReferenceProtoNet(shape[0], channels_last=True, device=device)

            def plain_step(i: int, plain=plain, sampler=sampler, images=images) -> None:  # noqa: ANN001
                plain.train_step(_plain_episode(sampler, images, i))

        out.append((name, "plain", plain_step))
    return out


def _plain_episode(sampler: EpisodeSampler, images: torch.Tensor, i: int) -> Episode:
    """Episode ``i``'s images as a plain loop gathers them: one index, ``/ 255`` (no rotation: none is drawn)."""
    ind = sampler.indices(i)
    way, shot = ind.support.shape
    rows = torch.from_numpy(np.concatenate((ind.support.reshape(-1), ind.query.reshape(-1)))).to(images.device)
    x = images.index_select(0, rows)
    x = (x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)).float().div_(255)
    labels = torch.arange(way, device=images.device)
    n_s = way * shot
    return Episode(
        x[:n_s],
        labels.repeat_interleave(shot),
        x[n_s:],
        labels.repeat_interleave(ind.query.shape[1]),
        tuple(map(str, ind.classes.tolist())),
        (),
        (),
        i,
    )


def run(
    *, device: torch.device, precision: str = "fp32", only: list[str] | None = None, steps: int = 10,
    rounds: int = 3, warmup: int = 2, per_class: int = 20,
) -> list[DeviceRow]:  # fmt: skip
    """Time every variant of the cases ``only`` (default all) interleaved; one row per variant."""
    from fewshot.device import device_facts

    names = list(CASES) if not only else only
    unknown = [n for n in names if n not in CASES]
    if unknown:
        raise ValueError(f"unknown bench device case(s) {unknown}; choose from {', '.join(CASES)}")
    variants = _cases(names, device, precision, per_class)
    for _, _, step in variants:
        for i in range(warmup):
            step(i)
    _sync(device)
    times: dict[tuple[str, str], list[float]] = {(c, v): [] for c, v, _ in variants}
    counter = warmup
    for _ in range(rounds):
        for case, variant, step in variants:
            _sync(device)
            t0 = time.perf_counter()
            for i in range(steps):
                step(counter + i)
            _sync(device)
            times[(case, variant)].append((time.perf_counter() - t0) / steps)
        counter += steps
    median = {k: statistics.median(v) for k, v in times.items()}
    gpu = device_facts(device)["gpu"] or "-"
    rows = []
    for case, variant, _ in variants:
        learner_name, norm, way, shot, query, shape, _ = CASES[case]
        plain_case = case.replace(f"_{norm}_", "_bn_")
        plain = median.get((plain_case, "plain"))
        ratio = plain / median[(case, variant)] if plain else float("nan")
        bn = median.get((plain_case, "trainer"))
        swbn = round(median[(case, variant)] / bn, 3) if norm == "swbn" and variant == "trainer" and bn else None
        rows.append(DeviceRow(str(device), gpu, case, variant, precision, 1.0 / median[(case, variant)], ratio, swbn))
    return rows


def format_table(rows: list[DeviceRow]) -> str:
    """Human-readable table: one line per variant."""
    lines = [f"{'case':32} {'variant':8} {'steps/s':>9} {'vs plain':>9} {'SWBN/BN':>8}   device"]
    for r in rows:
        swbn = f"{r.swbn_over_bn:8.2f}" if r.swbn_over_bn is not None else f"{'':8}"
        lines.append(
            f"{r.case:32} {r.variant:8} {r.steps_per_second:9.2f} {r.ratio_to_plain:8.2f}x {swbn}   {r.device} "
            f"{r.gpu} {r.precision}"
        )
    return "\n".join(lines)


def to_csv(rows: list[DeviceRow], env: dict[str, str], command: str) -> str:
    """CSV text: the command and environment lines (device, GPU, CUDA, cuDNN, driver), then one row per variant."""
    return rows_to_csv(rows, DeviceRow, env, command, {"steps_per_second": ".3f", "ratio_to_plain": ".3f"})


def write_csv(rows: list[DeviceRow], path, env: dict[str, str], command: str, force: bool = False):  # noqa: ANN001, ANN201
    """Write :func:`to_csv` to ``path`` atomically; never replaces an existing file unless ``force``."""
    return write_result(path, to_csv(rows, env, command), force=force)
