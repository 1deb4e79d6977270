"""Cost of the normalization layers, side by side: each layer alone and one Conv-4 ProtoNet training step.

Run through the CLI: ``python run_episode.py bench norms [--json] [--write]`` (the launcher sets the glibc
malloc tunables of cpu-performance). Two sections, each for two settings:

* ``omniglot``: a 60-way 1-shot 5-query training episode, 360 images 1×28×28, whose Conv-4 activations are
  (360, 64, 28, 28), (360, 64, 14, 14), (360, 64, 7, 7), (360, 64, 3, 3);
* ``miniimagenet``: 5-way 1-shot 15-query, 80 images 3×84×84: (80, 64, 84, 84) … (80, 64, 10, 10).

``layer``: forward + backward (train mode, state updates on) of every registered layer at its defaults, of
SWBN, IterNorm and DBN at equal group sizes (16 and 64, to check the claim that SWBN is cheaper than
IterNorm), and of ``torch.nn.BatchNorm2d`` (``torch_bn``, fused, for reference), on channels_last inputs of
each of the four shapes; the printed table sums the four (the norm cost of one Conv-4 pass).
``step``: one whole ProtoNet training step (forward, squared-Euclidean prototype loss, backward, Adam step) of
``fewshot.backbones.create("conv4", norm=...)`` in channels_last, for BN, SWBN at its default and at 64, and
IterNorm/DBN at 16 and 64; ``torch_bn`` is the same Conv-4 built from ``nn.BatchNorm2d``.

Method: configurations are interleaved round-robin (the order rotates every repeat) after warm-up runs (each
layer runs once when it is built; steps get one extra round), and the median wall time of each is reported
with its ratio to ``batchnorm`` (fewshot's primitive-op BN) and to ``torch_bn`` measured in the same run; the
process CPU time is given too (steadier on a shared machine). Absolute times drift between runs; ratios
taken side by side are what hold. The default run (3 repeats) takes about 2–4 minutes on the 2-core
machines, longer when other jobs share them.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks._results import environment, rows_to_csv, write_result
from fewshot.registry import option_label

__all__ = [
    "DATASETS",
    "Config",
    "Row",
    "bench_layers",
    "bench_steps",
    "conv4_shapes",
    "environment",
    "format_table",
    "layer_configs",
    "run",
    "step_configs",
    "to_csv",
    "write_csv",
]

WRITE_COMMAND = "python run_episode.py bench norms --write"
TORCH_BN = "torch_bn"
COMPARED_GROUP_SIZES = (16, 64)


@dataclass(frozen=True)
class Setting:
    """One few-shot setting: the training episode and the images it holds."""

    name: str
    n_way: int
    n_shot: int
    n_query: int
    in_channels: int
    image_size: int

    @property
    def n_images(self) -> int:
        return self.n_way * (self.n_shot + self.n_query)


DATASETS = {
    "omniglot": Setting("omniglot", 60, 1, 5, 1, 28),
    "miniimagenet": Setting("miniimagenet", 5, 1, 15, 3, 84),
}


@dataclass(frozen=True)
class Config:
    """A layer to measure: registry name (or ``torch_bn``), its options and a display label."""

    layer: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return option_label(self.layer, self.kwargs)

    def build(self, num_features: int) -> nn.Module:
        if self.layer == TORCH_BN:
            return nn.BatchNorm2d(num_features)
        from fewshot.norms import create

        return create(self.layer, num_features, **self.kwargs)

    def group_size(self, num_features: int = 64) -> int | str:
        """The resolved channels per group (``groups`` for Group Whitening), ``""`` if none or not buildable."""
        try:
            layer = self.build(num_features)
        except (TypeError, ValueError):
            return ""
        return getattr(layer, "group_size", getattr(layer, "groups", ""))


@dataclass
class Row:
    """One measurement. ``shape`` is an activation shape, ``conv4`` (sum of the four) or the episode."""

    section: str
    dataset: str
    label: str
    layer: str
    group_size: int | str
    shape: str
    ms: float
    cpu_ms: float
    ratio_to_batchnorm: float = float("nan")
    ratio_to_torch_bn: float = float("nan")
    error: str = ""


def conv4_shapes(n_images: int, image_size: int, channels: int = 64) -> list[tuple[int, int, int, int]]:
    """The four conv-output shapes of Conv-4 (3×3 padding-1 convs, each followed by a floor-halving pool)."""
    shapes, side = [], image_size
    for _ in range(4):
        shapes.append((n_images, channels, side, side))
        side //= 2
    return shapes


def layer_configs() -> list[Config]:
    """``torch_bn``, every registered layer at its defaults, and SWBN/IterNorm/DBN at 16 and 64 channels/group."""
    from fewshot.norms import names

    configs = [Config(TORCH_BN)] + [Config(n) for n in names()]
    for g in COMPARED_GROUP_SIZES:
        for name in ("swbn", "iternorm", "dbn"):
            if Config(name).group_size() != g:
                configs.append(Config(name, {"group_size": g}))
    return configs


def step_configs() -> list[Config]:
    """BN (ours and torch's), SWBN at its default and at 64, IterNorm and DBN at 16 and 64."""
    configs = [Config(TORCH_BN), Config("batchnorm"), Config("swbn")]
    for g in COMPARED_GROUP_SIZES:
        for name in ("swbn", "iternorm", "dbn"):
            if Config(name).group_size() != g or name != "swbn":
                configs.append(Config(name, {"group_size": g}))
    return configs


def _time_interleaved(fns: dict[str, Callable[[], None]], repeats: int, warmup: int) -> dict[str, tuple[float, float]]:
    """Median (wall ms, CPU ms) per function, run round-robin with a rotating order after ``warmup`` rounds."""
    labels = list(fns)
    wall: dict[str, list[float]] = {k: [] for k in labels}
    cpu: dict[str, list[float]] = {k: [] for k in labels}
    for _ in range(warmup):
        for k in labels:
            fns[k]()
    for r in range(repeats):
        for k in labels[r % len(labels) :] + labels[: r % len(labels)]:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[k]()
            wall[k].append((time.perf_counter() - t0) * 1e3)
            cpu[k].append((time.process_time() - c0) * 1e3)
    return {k: (statistics.median(wall[k]), statistics.median(cpu[k])) for k in labels}


def _add_ratios(rows: list[Row]) -> None:
    base = {(r.section, r.dataset, r.shape, r.label): r.ms for r in rows}
    for r in rows:
        key = (r.section, r.dataset, r.shape)
        bn, tbn = base.get((*key, "batchnorm")), base.get((*key, TORCH_BN))
        r.ratio_to_batchnorm = r.ms / bn if bn and not r.error else float("nan")
        r.ratio_to_torch_bn = r.ms / tbn if tbn and not r.error else float("nan")


def _layer_fn(layer: nn.Module, x: torch.Tensor, grad_out: torch.Tensor) -> Callable[[], None]:
    def fn() -> None:
        x.grad = None
        layer.zero_grad(set_to_none=True)
        layer(x).backward(grad_out)

    return fn


def bench_layers(setting: Setting, configs: Sequence[Config], repeats: int, warmup: int) -> list[Row]:
    """Forward+backward of each layer on each Conv-4 activation shape of ``setting``, plus the 4-shape sum."""
    gen = torch.Generator().manual_seed(0)
    rows: list[Row] = []
    totals: dict[str, list[float]] = {c.label: [0.0, 0.0] for c in configs}
    errors: dict[str, str] = {}
    for shape in conv4_shapes(setting.n_images, setting.image_size):
        x = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last).requires_grad_()
        grad_out = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)
        fns = {}
        for c in configs:
            try:
                layer = c.build(shape[1]).train()
                fn = _layer_fn(layer, x, grad_out)
                fn()
                fns[c.label] = fn
            except Exception as exc:  # reported in the table, the other layers are still measured
                errors[c.label] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        timed = _time_interleaved(fns, repeats, warmup)
        for c in configs:
            ms, cpu_ms = timed.get(c.label, (float("nan"), float("nan")))
            rows.append(_layer_row(setting, c, "x".join(map(str, shape)), ms, cpu_ms, errors))
            totals[c.label][0] += ms
            totals[c.label][1] += cpu_ms
        del x, grad_out, fns
    rows += [_layer_row(setting, c, "conv4", *totals[c.label], errors) for c in configs]
    return rows


def _layer_row(setting: Any, c: Config, shape: str, ms: float, cpu_ms: float, errors: dict[str, str]) -> Row:
    """One ``layer`` row: a configuration's time on one activation shape (or ``"conv4"``: summed over the four)."""
    error = errors.get(c.label, "")
    return Row("layer", setting.name, c.label, c.layer, c.group_size(), shape, ms, cpu_ms, error=error)


def _torch_bn_conv4(in_channels: int) -> nn.Module:
    layers: list[nn.Module] = []
    for c_in in (in_channels, 64, 64, 64):
        layers += [nn.Conv2d(c_in, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten())


def _step_fn(setting: Setting, config: Config, images: torch.Tensor) -> Callable[[], None]:
    if config.layer == TORCH_BN:
        net = _torch_bn_conv4(setting.in_channels)
    else:
        from fewshot.backbones import create

        net = create("conv4", in_channels=setting.in_channels, norm=config.layer, norm_kwargs=config.kwargs)
    net = net.to(memory_format=torch.channels_last).train()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    way, shot, query = setting.n_way, setting.n_shot, setting.n_query
    target = torch.arange(way).repeat_interleave(query)

    def fn() -> None:
        opt.zero_grad(set_to_none=True)
        feats = net(images).reshape(way, shot + query, -1)  # class-major episode
        prototypes = feats[:, :shot].mean(1)
        queries = feats[:, shot:].reshape(way * query, -1)
        logits = -(queries.pow(2).sum(1, keepdim=True) - 2 * queries @ prototypes.T + prototypes.pow(2).sum(1))
        F.cross_entropy(logits, target).backward()
        opt.step()

    return fn


def bench_steps(setting: Setting, configs: Sequence[Config], repeats: int, warmup: int) -> list[Row]:
    """One Conv-4 ProtoNet training step per configuration, channels_last."""
    images = torch.rand(
        setting.n_images,
        setting.in_channels,
        setting.image_size,
        setting.image_size,
        generator=torch.Generator().manual_seed(0),
    ).contiguous(memory_format=torch.channels_last)
    fns, errors = {}, {}
    for c in configs:
        torch.manual_seed(0)
        try:
            fns[c.label] = _step_fn(setting, c, images)
        except Exception as exc:
            errors[c.label] = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
    timed = _time_interleaved(fns, repeats, warmup)
    episode = (
        f"{setting.n_way}w{setting.n_shot}s{setting.n_query}q {setting.n_images}x{setting.in_channels}x"
        f"{setting.image_size}x{setting.image_size}"
    )
    return [
        Row(
            "step",
            setting.name,
            c.label,
            c.layer,
            c.group_size(),
            episode,
            *timed.get(c.label, (float("nan"), float("nan"))),
            error=errors.get(c.label, ""),
        )
        for c in configs
    ]


def run(
    datasets: Sequence[str] = tuple(DATASETS),
    sections: Sequence[str] = ("layer", "step"),
    repeats: int = 3,
    warmup: int = 0,
    layers: Sequence[Config] | None = None,
    steps: Sequence[Config] | None = None,
) -> list[Row]:
    """Run the benchmark; returns the rows (ratios filled in). Unknown dataset or section names raise."""
    for d in datasets:
        if d not in DATASETS:
            raise ValueError(f"unknown benchmark dataset {d!r}; expected some of {', '.join(DATASETS)}")
    for s in sections:
        if s not in ("layer", "step"):
            raise ValueError(f"unknown benchmark section {s!r}; expected 'layer' and/or 'step'")
    if repeats < 1 or warmup < 0:
        raise ValueError(f"repeats must be >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    rows: list[Row] = []
    for d in datasets:
        if "layer" in sections:
            rows += bench_layers(DATASETS[d], layers if layers is not None else layer_configs(), repeats, warmup)
        if "step" in sections:
            rows += bench_steps(DATASETS[d], steps if steps is not None else step_configs(), repeats, warmup + 1)
    _add_ratios(rows)
    return rows


def format_table(rows: Sequence[Row]) -> str:
    """Human-readable table: layer rows summed over the four shapes, then the whole steps."""
    lines = [
        f"{'section':7} {'dataset':12} {'layer':28} {'group':>5} {'shape':24} {'ms':>9} {'cpu ms':>9} "
        f"{'/batchnorm':>10} {'/torch_bn':>9}"
    ]
    for r in rows:
        if r.section == "layer" and r.shape != "conv4":
            continue
        shape = "4 Conv-4 shapes" if r.shape == "conv4" else r.shape
        if r.error:
            lines.append(f"{r.section:7} {r.dataset:12} {r.label:28} {r.group_size!s:>5} {shape:24} error: {r.error}")
            continue
        lines.append(
            f"{r.section:7} {r.dataset:12} {r.label:28} {r.group_size!s:>5} {shape:24} {r.ms:9.1f} "
            f"{r.cpu_ms:9.1f} {r.ratio_to_batchnorm:10.2f} {r.ratio_to_torch_bn:9.2f}"
        )
    return "\n".join(lines)


def claims(rows: Sequence[Row]) -> list[str]:
    """One line per (section, dataset, group size): is SWBN cheaper than IterNorm and DBN at that group size?"""
    out = []
    picked = [r for r in rows if (r.section == "step" or r.shape == "conv4") and not r.error]
    for section in ("layer", "step"):
        for dataset in DATASETS:
            for g in COMPARED_GROUP_SIZES:
                ms = {
                    r.layer: r.ms
                    for r in picked
                    if r.section == section
                    and r.dataset == dataset
                    and r.layer in ("swbn", "iternorm", "dbn")
                    and r.group_size == g
                }
                if len(ms) == 3:
                    verdict = "yes" if ms["swbn"] < min(ms["iternorm"], ms["dbn"]) else "NO"
                    out.append(
                        f"{section} {dataset} group {g}: SWBN cheaper than IterNorm and DBN: {verdict} "
                        f"(swbn {ms['swbn']:.1f} ms, iternorm {ms['iternorm']:.1f} ms, dbn {ms['dbn']:.1f} ms)"
                    )
    return out


def to_csv(rows: Sequence[Row], env: dict[str, str], command: str = WRITE_COMMAND) -> str:
    """CSV text whose first line is the command and the second the environment (both ``#`` comments)."""
    formats = dict.fromkeys(("ms", "cpu_ms", "ratio_to_batchnorm", "ratio_to_torch_bn"), ".4g")
    return rows_to_csv(rows, Row, env, command, formats)


def write_csv(
    rows: Sequence[Row], path: Path, env: dict[str, str], force: bool = False, command: str = WRITE_COMMAND
) -> Path:
    """Write :func:`to_csv` to ``path`` atomically; never overwrites unless ``force``."""
    return write_result(path, to_csv(rows, env, command), force=force)
