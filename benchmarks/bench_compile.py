"""``train.compile`` measured: ProtoNet training steps with and without ``torch.compile``, compile time included.

Section ``compile`` of ``python run_episode.py bench train``. For each ProtoNet setting of
:data:`benchmarks.bench_steps.SETTINGS` (default: all three; ``--settings`` picks) and each norm (fewshot's
``batchnorm`` and ``swbn``), two learners are built from the same seed: one eager, one with its backbone
compiled as ``train.compile`` does (:func:`fewshot.training.compile.compile_backbone`). The compiled learner's
first step (tracing and code generation; after the eager one's warm-up) is timed on its own: ``compile_s`` is
that step's time minus the eager median. Then both take ``steps`` steps on the same episodes, alternating.

``payback_minutes`` is the length of an eager run after which the compiled run would have finished the same
steps sooner: ``compile_s / (1 − compiled/eager) / 60``; infinite when the compiled step is not faster.
``pays_back_in_5_min`` answers issue 13's rule: compile is on by default only if it pays back within 5 minutes.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks._results import environment, rows_to_csv, write_result
from benchmarks.bench_steps import SETTINGS, select

__all__ = ["CompileRow", "environment", "format_table", "run", "to_csv", "write_csv"]

NORMS = ("batchnorm", "swbn")
PAYBACK_LIMIT_MINUTES = 5.0


@dataclass
class CompileRow:
    """One setting and norm: eager and compiled median step times, compile time, and when it pays back."""

    setting: str
    norm: str
    steps: int
    eager_ms: float
    compiled_ms: float
    speedup: float
    compile_s: float
    payback_minutes: float
    pays_back_in_5_min: bool


def _learner_step(cfg, split, compiled: bool):  # noqa: ANN001, ANN202
    from fewshot.training.build import build_learner
    from fewshot.training.compile import compile_backbone

    torch.manual_seed(cfg.seed)
    learner = build_learner(cfg, cfg.train.n_way, split.image_shape)
    if compiled:
        compile_backbone(learner, cfg.learner.name)
    optimizer = torch.optim.Adam(learner.parameters(), lr=cfg.train.lr)

    def step(batch: list) -> float:
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss, _ = learner.meta_loss(batch, policy=cfg.train.norm_policy)
        loss.backward()
        optimizer.step()
        return time.perf_counter() - t0

    return step


def payback_minutes(eager_s: float, compiled_s: float, compile_s: float) -> float:
    """Minutes of eager running after which compiling has paid for itself (``inf`` if the step is not faster).

    >>> payback_minutes(1.0, 0.5, 30.0)
    1.0
    """
    if compiled_s >= eager_s:
        return math.inf
    return max(compile_s, 0.0) / (1.0 - compiled_s / eager_s) / 60.0


def run(
    *, steps: int = 30, warmup: int = 2, data_root: str | None = None, settings: Sequence[str] | None = None
) -> list[CompileRow]:
    """Measure each chosen ProtoNet setting (labels or parts, default all) with each norm of :data:`NORMS`."""
    from fewshot.training.build import build_split, build_train_sampler

    if steps < 1 or warmup < 0:
        raise ValueError(f"step counts must be >= 1 and warmup >= 0, got steps {steps}, warmup {warmup}")
    protonet = [s.label for s in SETTINGS if s.label.startswith("protonet")]
    labels = select(settings, protonet, "ProtoNet setting")
    extra = [f"data.data_root={data_root!r}"] if data_root is not None else []
    rows = []
    for setting in (s for s in SETTINGS if s.label in labels):
        base = setting.resolve(*extra)
        split = build_split(base, base.data.train_split)
        sampler = build_train_sampler(base, split)
        batches = [[sampler[i]] for i in range(warmup + 1 + steps)]
        for norm in NORMS:
            cfg = setting.resolve(*extra, f"norm={norm}")
            eager, compiled = _learner_step(cfg, split, False), _learner_step(cfg, split, True)
            warm = [eager(b) for b in batches[: max(warmup, 1)]]
            first = compiled(batches[max(warmup, 1) - 1])  # tracing and code generation happen here
            times: dict[str, list[float]] = {"eager": [], "compiled": []}
            for i, batch in enumerate(batches[warmup + 1 :]):
                order = ("eager", "compiled") if i % 2 == 0 else ("compiled", "eager")
                for name in order:
                    times[name].append((eager if name == "eager" else compiled)(batch))
            e, c = statistics.median(times["eager"]), statistics.median(times["compiled"])
            compile_s = first - statistics.median(warm[-1:] + times["eager"])
            payback = payback_minutes(e, c, compile_s)
            rows.append(
                CompileRow(setting.label, norm, steps, e * 1e3, c * 1e3, e / c, compile_s, payback,
                           payback <= PAYBACK_LIMIT_MINUTES)
            )  # fmt: skip
    return rows


def format_table(rows: Sequence[CompileRow]) -> str:
    """Human-readable table, one line per setting and norm."""
    lines = [
        f"{'setting':34} {'norm':10} {'steps':>5} {'eager ms':>9} {'compiled ms':>11} {'speed-up':>8} "
        f"{'compile s':>9} {'payback min':>11} {'<= 5 min':>8}"
    ]
    for r in rows:
        lines.append(
            f"{r.setting:34} {r.norm:10} {r.steps:5d} {r.eager_ms:9.1f} {r.compiled_ms:11.1f} {r.speedup:8.3f} "
            f"{r.compile_s:9.1f} {r.payback_minutes:11.1f} {str(r.pays_back_in_5_min):>8}"
        )
    return "\n".join(lines)


def to_csv(rows: Sequence[CompileRow], env: dict[str, str], command: str) -> str:
    """CSV text: the command and environment lines, then one row per setting and norm."""
    formats = {"eager_ms": ".1f", "compiled_ms": ".1f", "speedup": ".3f", "compile_s": ".1f", "payback_minutes": ".1f"}
    return rows_to_csv(rows, CompileRow, env, command, formats)


def write_csv(rows: Sequence[CompileRow], path: Path, env: dict[str, str], command: str, force: bool = False) -> Path:
    """Write :func:`to_csv` to ``path`` atomically; never replaces an existing file unless ``force``."""
    return write_result(path, to_csv(rows, env, command), force=force)
