"""Training steps side by side: fewshot's learners (per norm layer) against the loops a user would write.

The second half of ``python run_episode.py bench train`` (the first, :mod:`benchmarks.bench_train`, runs the
real trainer). For each setting below the same episodes are drawn once from the setting's training sampler,
then every variant takes one training step on each of them, interleaved round-robin (the order rotates every
episode) in one process, so machine load hits all variants alike. A step is what the trainer's step does:
``zero_grad``, ``learner.meta_loss(meta_batch, policy=train.norm_policy)``, ``backward``, ``Adam.step``.

Settings (the experiment files of the accuracy runs; real data from the data root):

* ``protonet omniglot 60w1s5q``: ``configs/protonet/omniglot_vinyals_1shot.yaml``;
* ``protonet miniimagenet 5w1s15q``: ``configs/protonet/miniimagenet_1shot.yaml`` with ``train.n_way=5``;
* ``protonet miniimagenet 20w5s15q``: ``configs/protonet/miniimagenet_5shot.yaml``;
* ``maml omniglot 5w1s15q mb32 2nd-order``: ``configs/maml/omniglot_vinyals_5w1s.yaml``;
* ``protonet omniglot 5w1s1q (fixed cost)``: the Omniglot file at 5-way 1-shot 1-query (10 images), where the
  kernels cost little: what a step costs besides its kernels (Python, dispatch, the norm layers' explicit state
  updates and their finiteness guard). Not a target of issue 13: :func:`claims` prints fewshot BN's fixed cost
  over the plain loop in milliseconds.

Variants: ``batchnorm`` (fewshot's BN; torch's fused kernel where exact, see :mod:`fewshot.norms.kernels`),
``batchnorm[primitive]`` (the same inside ``primitive_kernels()``: fewshot's BN before issue 13),
``swbn`` (on the compiled row kernel where it applies, :mod:`fewshot.norms.swbn_rows`), ``swbn[torch]`` (the
same with compiled kernels off: torch's batch-norm kernel and the group product), ``iternorm[group_size=16]``
and ``dbn[group_size=16]`` (SWBN's default group size); for ProtoNet
the loops of :mod:`benchmarks.reference_loops`: ``plain`` (tuned; the reference of ``speed_vs_plain``),
``plain[inplace]`` (the same with in-place ReLU, as fewshot's Conv-4) and ``default`` (learn2learn-style); for
MAML ``batchnorm[vmap]`` and ``swbn[vmap]``, the meta-batch's tasks as one ``torch.func.vmap``
(``learner.kwargs.vmap_tasks=true``) instead of the task loop the other MAML variants run.

Reported per variant: median wall and CPU milliseconds per step, ``vs_batchnorm`` (time / fewshot BN's time),
and for ProtoNet ``speed_vs_plain`` (the plain loop's time / this variant's: ≥ 1 means at least as fast).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks._results import environment, rows_to_csv, write_result
from benchmarks.reference_loops import REFERENCE_LOOPS, ReferenceProtoNet

__all__ = [
    "FIXED_COST",
    "SETTINGS",
    "StepRow",
    "StepSetting",
    "Variant",
    "all_variant_labels",
    "claims",
    "environment",
    "format_table",
    "run",
    "select",
    "to_csv",
    "variants",
    "write_csv",
]

REPO = Path(__file__).resolve().parents[1]
BN = "batchnorm"


@dataclass(frozen=True)
class StepSetting:
    """A setting: a label, an experiment file and ``--set`` overrides."""

    label: str
    config: str
    overrides: tuple[str, ...] = ()

    def resolve(self, *extra: str):  # noqa: ANN201 - an ExperimentConfig
        from fewshot.config import load_config

        return load_config(REPO / self.config, [*self.overrides, *extra])


SETTINGS: tuple[StepSetting, ...] = (
    StepSetting("protonet omniglot 60w1s5q", "configs/protonet/omniglot_vinyals_1shot.yaml"),
    StepSetting("protonet miniimagenet 5w1s15q", "configs/protonet/miniimagenet_1shot.yaml", ("train.n_way=5",)),
    StepSetting("protonet miniimagenet 20w5s15q", "configs/protonet/miniimagenet_5shot.yaml"),
    StepSetting("maml omniglot 5w1s15q mb32 2nd-order", "configs/maml/omniglot_vinyals_5w1s.yaml"),
    StepSetting(
        "protonet omniglot 5w1s1q (fixed cost)",
        "configs/protonet/omniglot_vinyals_1shot.yaml",
        ("train.n_way=5", "train.n_query=1"),
    ),
)
#: The setting that measures per-step cost besides the kernels (no issue-13 target applies to it).
FIXED_COST = SETTINGS[-1].label


@dataclass(frozen=True)
class Variant:
    """What takes the steps: a fewshot norm (``norm`` + options) or a reference loop (``reference``)."""

    label: str
    norm: str | None = None
    norm_kwargs: tuple[tuple[str, object], ...] = ()
    primitive: bool = False
    native: bool = True
    reference: str | None = None
    overrides: tuple[str, ...] = ()


def variants(learner: str) -> list[Variant]:
    """The variants measured for ``learner`` (``"protonet"`` also gets the reference loops)."""
    out = [
        Variant(BN, BN),
        Variant(f"{BN}[primitive]", BN, primitive=True),
        Variant("swbn", "swbn"),
        Variant("swbn[torch]", "swbn", native=False),
        Variant("iternorm[group_size=16]", "iternorm", (("group_size", 16),)),
        Variant("dbn[group_size=16]", "dbn", (("group_size", 16),)),
    ]
    if learner == "protonet":
        out += [Variant(name, reference=name) for name in REFERENCE_LOOPS]
    if learner == "maml":
        vmap = ("learner.kwargs.vmap_tasks=true",)
        out += [Variant(f"{BN}[vmap]", BN, overrides=vmap), Variant("swbn[vmap]", "swbn", overrides=vmap)]
    return out


@dataclass
class StepRow:
    """One variant on one setting: median step times and ratios measured in the same run."""

    setting: str
    variant: str
    steps: int
    ms: float
    cpu_ms: float
    vs_batchnorm: float = float("nan")
    speed_vs_plain: float = float("nan")
    speed_vs_loop: float = float("nan")


def _norm_override(norm: str, kwargs: tuple[tuple[str, object], ...]) -> list[str]:
    return [f"norm={norm}", *(f"model.norm_kwargs.{k}={v}" for k, v in kwargs)]


def _fewshot_step(cfg, split, variant: Variant) -> Callable[[list], None]:  # noqa: ANN001
    from fewshot.norms import native
    from fewshot.norms.kernels import primitive_kernels
    from fewshot.training.build import build_learner

    torch.manual_seed(cfg.seed)
    learner = build_learner(cfg, cfg.train.n_way, split.image_shape)
    optimizer = torch.optim.Adam(learner.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    policy = cfg.train.norm_policy

    def step(batch: list) -> None:
        with (
            primitive_kernels() if variant.primitive else nullcontext(),
            native.disabled() if not variant.native else nullcontext(),
        ):
            optimizer.zero_grad(set_to_none=True)
            loss, _ = learner.meta_loss(batch, policy=policy)
            loss.backward()
            optimizer.step()

    return step


def _reference_step(variant: Variant, in_channels: int, lr: float) -> Callable[[list], None]:
    channels_last, inplace_relu = REFERENCE_LOOPS[variant.reference]
    loop = ReferenceProtoNet(in_channels, channels_last=channels_last, inplace_relu=inplace_relu, lr=lr)
    return lambda batch: loop.step(batch[0])


def measure(
    setting: StepSetting,
    steps: int,
    warmup: int,
    data_root: str | None = None,
    only_variants: Sequence[str] | None = None,
) -> list[StepRow]:
    """Median step time of every variant on ``steps`` meta-batches of ``setting`` (after ``warmup`` untimed).

    ``only_variants``: labels of :func:`variants` to measure (``None``: all); fewshot's ``batchnorm`` is the
    reference of ``vs_batchnorm`` and the ``plain`` loop of ``speed_vs_plain``, so leave them in for the ratios.
    """
    from fewshot.training.build import build_split, build_train_sampler

    extra = [f"data.data_root={data_root!r}"] if data_root is not None else []
    base = setting.resolve(*extra)
    chosen = [v for v in variants(base.learner.name) if only_variants is None or v.label in only_variants]
    if not chosen:
        return []
    split = build_split(base, base.data.train_split)
    sampler = build_train_sampler(base, split)
    mb = base.train.meta_batch
    batches = [[sampler[i * mb + j] for j in range(mb)] for i in range(warmup + steps)]
    fns: dict[str, Callable[[list], None]] = {}
    for v in chosen:
        if v.reference is not None:
            fns[v.label] = _reference_step(v, split.image_shape[0], base.train.lr)
        else:
            cfg = setting.resolve(*extra, *_norm_override(v.norm, v.norm_kwargs), *v.overrides)
            fns[v.label] = _fewshot_step(cfg, split, v)
    labels = list(fns)
    wall: dict[str, list[float]] = {k: [] for k in labels}
    cpu: dict[str, list[float]] = {k: [] for k in labels}
    for i, batch in enumerate(batches):
        r = i % len(labels)
        for k in labels[r:] + labels[:r]:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[k](batch)
            if i >= warmup:
                wall[k].append((time.perf_counter() - t0) * 1e3)
                cpu[k].append((time.process_time() - c0) * 1e3)
    rows = [StepRow(setting.label, k, steps, statistics.median(wall[k]), statistics.median(cpu[k])) for k in labels]
    return with_ratios(rows)


def with_ratios(rows: list[StepRow]) -> list[StepRow]:
    """Fill the ratios of one setting's ``rows`` from their times: ``vs_batchnorm``, ``speed_vs_plain`` and,
    for a ``[vmap]`` variant, ``speed_vs_loop`` (the same norm's task-loop time / the vmap time)."""
    ms = {r.variant: r.ms for r in rows}
    for r in rows:
        r.vs_batchnorm = r.ms / ms.get(BN, float("nan"))
        if "plain" in ms:
            r.speed_vs_plain = ms["plain"] / r.ms
        loop = r.variant.removesuffix("[vmap]")
        if r.variant.endswith("[vmap]") and loop in ms:
            r.speed_vs_loop = ms[loop] / r.ms
    return rows


def select(items: Sequence[str] | None, known: Sequence[str], what: str) -> list[str]:
    """The entries of ``known`` named by ``items`` (each an exact name or a unique-or-not substring of names).

    ``None`` or empty selects all. An item matching nothing raises ``ValueError`` listing the known names.
    """
    if not items:
        return list(known)
    chosen = []
    for item in items:
        hits = [k for k in known if k == item] or [k for k in known if item in k]
        if not hits:
            raise ValueError(f"no {what} matches {item!r}; known {what}s: {', '.join(map(repr, known))}")
        chosen += [h for h in hits if h not in chosen]
    return [k for k in known if k in chosen]


def all_variant_labels() -> list[str]:
    """Every variant label of every learner, in table order."""
    return list(dict.fromkeys(v.label for learner in ("protonet", "maml") for v in variants(learner)))


def run(
    *,
    protonet_steps: int = 30,
    maml_steps: int = 5,
    warmup: int = 2,
    data_root: str | None = None,
    settings: Sequence[str] | None = None,
    only_variants: Sequence[str] | None = None,
) -> list[StepRow]:
    """:func:`measure` the settings of :data:`SETTINGS` named by ``settings`` (labels or parts; default all)
    with the variants named by ``only_variants`` (labels or parts, see :func:`select`; default all)."""
    if protonet_steps < 1 or maml_steps < 1 or warmup < 0:
        raise ValueError(
            f"step counts must be >= 1 and warmup >= 0, got protonet {protonet_steps}, maml {maml_steps}, "
            f"warmup {warmup}"
        )
    labels = select(settings, [s.label for s in SETTINGS], "setting")
    chosen = select(only_variants, all_variant_labels(), "variant") if only_variants else None
    rows: list[StepRow] = []
    for s in SETTINGS:
        if s.label not in labels:
            continue
        steps = protonet_steps if s.label.startswith("protonet") else maml_steps
        rows += measure(s, steps, warmup, data_root, chosen)
    return rows


#: The targets of issue 13: (variant, reference variant, bound on the time ratio, learner prefix).
_TARGETS = (
    (BN, "plain", 1.0, "protonet"),
    ("swbn", BN, 1.25, "protonet"),
    ("swbn", BN, 1.30, "maml"),
)


def claims(rows: Sequence[StepRow]) -> list[str]:
    """One line per target of issue 13 and setting: the measured ratio and whether it holds."""
    ms = {(r.setting, r.variant): r.ms for r in rows}
    lines = []
    for setting in dict.fromkeys(r.setting for r in rows):
        if setting == FIXED_COST:
            if {(setting, BN), (setting, "plain")} <= ms.keys():
                extra = ms[(setting, BN)] - ms[(setting, "plain")]
                lines.append(f"{setting}: batchnorm step time - plain {extra:+.2f} ms (fixed cost per step; no target)")
            continue
        for variant, ref, bound, learner in _TARGETS:
            if not setting.startswith(learner) or (setting, ref) not in ms or (setting, variant) not in ms:
                continue
            ratio = ms[(setting, variant)] / ms[(setting, ref)]
            verdict = "holds" if ratio <= bound else "MISSED"
            lines.append(f"{setting}: {variant} / {ref} step time {ratio:.3f} (target <= {bound:.2f}): {verdict}")
        for fast in (BN, f"{BN}[vmap]"):
            if setting.startswith("maml") and {(setting, f"{BN}[primitive]"), (setting, fast)} <= ms.keys():
                speedup = ms[(setting, f"{BN}[primitive]")] / ms[(setting, fast)]
                verdict = "holds" if speedup >= 1.3 else "MISSED"
                lines.append(
                    f"{setting}: {fast} meta-step speed-up over the task loop with primitive-op BN (the pre-issue "
                    f"path) {speedup:.3f} (target >= 1.30): {verdict}"
                )
        for other in ("iternorm[group_size=16]", "dbn[group_size=16]"):
            if {(setting, other), (setting, "swbn")} <= ms.keys():
                ratio = ms[(setting, "swbn")] / ms[(setting, other)]
                verdict = "holds" if ratio < 1 else "MISSED"
                lines.append(f"{setting}: swbn / {other} {ratio:.3f} (target < 1): {verdict}")
    return lines


def format_table(rows: Sequence[StepRow]) -> str:
    """Human-readable table, one line per setting and variant."""
    lines = [
        f"{'setting':38} {'variant':26} {'steps':>5} {'ms':>9} {'cpu ms':>9} {'vs BN':>7} {'speed vs plain':>14} "
        f"{'speed vs loop':>13}"
    ]
    for r in rows:
        lines.append(
            f"{r.setting:38} {r.variant:26} {r.steps:5d} {r.ms:9.1f} {r.cpu_ms:9.1f} {r.vs_batchnorm:7.3f} "
            f"{r.speed_vs_plain:14.3f} {r.speed_vs_loop:13.3f}"
        )
    return "\n".join(lines)


def to_csv(rows: Sequence[StepRow], env: dict[str, str], command: str) -> str:
    """CSV text: the command and environment lines, then one row per setting and variant."""
    formats = {"ms": ".1f", "cpu_ms": ".1f", "vs_batchnorm": ".4f", "speed_vs_plain": ".4f", "speed_vs_loop": ".4f"}
    return rows_to_csv(rows, StepRow, env, command, formats)


def write_csv(rows: Sequence[StepRow], path: Path, env: dict[str, str], command: str, force: bool = False) -> Path:
    """Write :func:`to_csv` to ``path`` atomically; never replaces an existing file unless ``force``."""
    return write_result(path, to_csv(rows, env, command), force=force)
