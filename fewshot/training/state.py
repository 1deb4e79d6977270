"""The records of a training run: its resumable counters, what a callback sees, and what ``train`` returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

__all__ = ["StepInfo", "TrainResult", "TrainState"]


@dataclass(frozen=True)
class StepInfo:
    """What a ``callback`` sees after each meta-step (raise ``KeyboardInterrupt`` in it to stop and save).

    ``loss`` and ``acc`` are read from the step's metrics when first asked for: on a device that is a host read,
    which waits for the step to finish, so a callback that looks only at ``episodes_done``, ``lr`` or
    ``train_seconds`` leaves the device running ahead.

    Example:
        >>> import torch
        >>> info = StepInfo(4, torch.tensor(0.25), torch.tensor(0.5, dtype=torch.float64), 1e-3, 2.0)
        >>> info.loss, info.acc
        (0.25, 0.5)
    """

    episodes_done: int
    step_loss: Any = field(repr=False)  # 0-dim tensor (or float) as the learner returned it
    step_acc: Any = field(repr=False)
    lr: float
    train_seconds: float

    @cached_property
    def loss(self) -> float:
        """The meta-batch's mean loss (a host read on first access)."""
        return float(self.step_loss)

    @cached_property
    def acc(self) -> float:
        """The meta-batch's query accuracy (a host read on first access)."""
        return float(self.step_acc)


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
