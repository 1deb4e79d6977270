"""The records of a training run: its resumable counters, what a callback sees, and what ``train`` returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["StepInfo", "TrainResult", "TrainState"]


@dataclass(frozen=True)
class StepInfo:
    """What a ``callback`` sees after each meta-step (raise ``KeyboardInterrupt`` in it to stop and save)."""

    episodes_done: int
    loss: float
    acc: float
    lr: float
    train_seconds: float


@dataclass(frozen=True)
class TrainResult:
    """Outcome of :func:`train`: the run directory, final status and the contents of ``metrics.json``."""

    run_dir: Path
    status: str
    episodes_done: int
    best_val_acc: float | None
    best_episode: int | None
    metrics: dict[str, Any]


@dataclass
class TrainState:
    """Counters of a run, saved in ``last.pt`` under ``"state"`` (all plain numbers, restored on resume).

    ``log_*`` are the sums over the episodes since the last ``train_log.csv`` row, so that the rows of a
    resumed run equal those of an uninterrupted one.
    """

    episodes_done: int = 0
    best_val_acc: float | None = None
    best_episode: int | None = None
    last_val_acc: float | None = None
    last_val_episode: int | None = None
    train_seconds: float = 0.0
    step_seconds: float = 0.0
    overhead_seconds: float = 0.0
    val_seconds: float = 0.0
    log_loss: float = 0.0  # sums over the episodes since the last log row
    log_acc: float = 0.0
    log_count: int = 0
