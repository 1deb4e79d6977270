"""The episodic meta-training loop: Adam + per-episode step schedule, validation, checkpoints, exact resume.

Meta-step ``b`` trains on episodes ``b*meta_batch ... (b+1)*meta_batch - 1`` of
``EpisodeSampler(train split, seed=cfg.seed)``; an episode is a pure function of ``(seed, index)``, and every
other piece of state (model, optimizer, scheduler, episode counter, best-so-far, elapsed time, the torch /
numpy / Python RNG states and the log accumulators) is in ``checkpoints/last.pt``. So a run resumed from
``last.pt`` continues bit for bit: its final parameters equal those of an uninterrupted run.

Stops: all ``train.episodes`` done (``finished``), the ``train.max_minutes`` budget spent (``stopped_budget``,
checked between steps), or Ctrl-C / SIGTERM (``interrupted``: the first signal finishes the current step and saves
``last.pt``; a second one aborts at once). Time inside the model step (forward, backward, optimizer) and time
outside it (sampling, logging, checkpointing) are measured separately and stored in ``metrics.json``.

Faults: the run directory is checked for writability before any data is loaded; one process at a time holds
the run (``.lock``, see :func:`~fewshot.training.run_dir.run_lock`); a write that fails (disk full, read-only
folder, quota) raises :class:`~fewshot.errors.StorageError` while ``last.pt`` still holds the previous complete
checkpoint; a run stopped before its first checkpoint is started again in place.

Several processes (``torchrun``, :mod:`~fewshot.training.distributed`): each rank trains on its share of every
meta-step's episodes and the ranks average gradients and gather norm statistics
(:mod:`~fewshot.training.meta_step_sync`), so every rank holds the single-process model after each step. Rank 0
alone holds the lock and writes the run folder; validation episodes are split across the ranks and their counts
summed; stop decisions (budget, signals) are agreed by all ranks before each step. docs/distributed.md.
"""

from __future__ import annotations

import contextlib
import math
import os
import random
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import asdict, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from episodes.split import ClassSplit
from fewshot.config.loader import config_to_dict, save_config, with_current_names
from fewshot.config.schema import ExperimentConfig
from fewshot.device import model_device, run_device
from fewshot.errors import DataError, StorageError
from fewshot.host_reads import defers_host_reads
from fewshot.learners.base import syncing_norm_stats
from fewshot.norms import NormLayer, enforce_state_bounds, notify_lr_scale, read_device_checks
from fewshot.numerics import autocast, restoring_numerics, set_deterministic, set_precision
from fewshot.training.build import build_learner, build_split, build_train_sampler
from fewshot.training.checkpoint import CHECKPOINT_FORMAT, get_rng_state, save_checkpoint, set_rng_state
from fewshot.training.compile import compile_backbone
from fewshot.training.distributed import Distributed, DistributedError, from_env, to_device
from fewshot.training.episode_sets import val_episode_set
from fewshot.training.init_from import load_backbone_weights
from fewshot.training.interrupt import stop_on_signals
from fewshot.training.meta_step_sync import (
    NormStatsSync,
    average_gradients,
    check_learner,
    check_meta_batch,
    local_episodes,
    mean_over_ranks,
    split_evenly,
)
from fewshot.training.run_dir import (
    check_resume_changes,
    check_writable,
    never_checkpointed,
    prepare_run_dir,
    read_verified_checkpoint,
    run_lock,
    write_env,
    write_json,
)
from fewshot.training.state import StepInfo, TrainResult, TrainState
from fewshot.training.train_log import TrainLog

__all__ = ["StepInfo", "TrainResult", "train"]

_clock = time.perf_counter  # the trainer's only clock (tests replace it to make budgets deterministic)


def _label_norm_layers(model: torch.nn.Module) -> None:
    """Give every normalization layer its module path as ``label``, so that its warnings name it."""
    for name, module in model.named_modules():
        if isinstance(module, NormLayer):
            module.label = name


class _NoLog:
    """The train log of a rank other than 0 (rank 0 alone writes ``train_log.csv``)."""

    def write(self, *args: Any) -> None:
        pass

    def close(self) -> None:
        pass


class _Trainer:
    def __init__(
        self,
        cfg: ExperimentConfig,
        run_dir: Path,
        *,
        resume: bool,
        quiet: bool,
        callback: Callable[[StepInfo], Any] | None,
        train_split: ClassSplit | None,
        val_split: ClassSplit | None,
        runs_root: str | Path | None,
        deterministic: bool = False,
        dist: Distributed,
        device_requested: bool = False,
    ) -> None:
        self.deterministic = deterministic
        self._pending: list[tuple[Any, Any]] = []  # per-step (loss, acc) not yet read (tensors stay on the device)
        self._pending_from = 0  # first episode of the pending steps
        self._bar: Any = None  # the progress bar, when shown: its loss/acc averages advance at each read
        self._ema: tuple[float, float] | None = None
        self.dist, self._device_requested = dist, device_requested
        self.device = dist.device
        self.cfg, self.run_dir, self.resume, self.quiet, self.callback = cfg, Path(run_dir), resume, quiet, callback
        self._given_splits, self._runs_root = (train_split, val_split), runs_root
        self.state = TrainState()
        self._in_step = False
        self._lr_follows = cfg.train.whitening_rate_follows_lr
        self._rate_factor = 1.0
        self._config_changes: dict[str, Any] = {}
        self._saved_episode: int | None = None  # episode of the last complete last.pt
        self.locks = contextlib.ExitStack()  # the run lock, held from setup until train() returns
        self._locked = False
        self.log: Any = _NoLog()

    # ------------------------------------------------------------------------------------------------ setup
    def setup(self) -> None:
        t, dist = self.cfg.train, self.dist
        check_meta_batch(t.meta_batch, dist.world_size)
        restart, payload, failure = False, None, None
        if dist.is_main:
            try:
                restart, payload = self._open_run_dir()
            except Exception as exc:
                failure = exc
        if dist.active:  # the other ranks learn rank 0's outcome, and the checkpoint to resume (no shared disk needed)
            told = dist.broadcast_object(
                (self.resume, payload, None if failure is None else f"{type(failure).__name__}: {failure}"),
                "broadcast of the run folder's state from rank 0",
            )
            if failure is None and told[2] is not None:
                raise DistributedError(f"rank {dist.rank}: rank 0 could not open the run: {told[2]}")
            self.resume, payload = told[0], told[1]
        if failure is not None:
            raise failure
        self._load_and_build(restart, payload)

    def _open_run_dir(self) -> tuple[bool, dict[str, Any] | None]:
        """Rank 0: check, lock and read the run folder before any data is loaded; (restart, payload to resume)."""
        restart = self.run_dir.is_dir() and never_checkpointed(self.run_dir)
        if restart:
            warnings.warn(
                f"run {str(self.run_dir)!r} was stopped before its first checkpoint: nothing to resume, starting it "
                "again from episode 0 in place",
                stacklevel=4,
            )
            self.resume = False
        prepare_run_dir(self.run_dir, resume=self.resume, create=False)  # fail fast, before loading data
        if self.run_dir.is_dir():
            self._lock()  # before anything in the directory is read or replaced
        check_writable(self.run_dir / "checkpoints", "the run's checkpoints")
        return restart, (self._verified_last() if self.resume else None)  # before loading any data

    def _load_and_build(self, restart: bool, payload: dict[str, Any] | None) -> None:
        cfg, t, dist = self.cfg, self.cfg.train, self.dist
        train_split, val_split = self._given_splits
        train_split = train_split or build_split(cfg, cfg.data.train_split)
        if cfg.data.val_split is not None:
            val_split = val_split or build_split(cfg, cfg.data.val_split)
            shared = set(train_split.class_names) & set(val_split.class_names)
            if shared:
                warnings.warn(
                    f"{len(shared)} of the {val_split.n_classes} validation classes (split {cfg.data.val_split!r}) "
                    f"are also training classes (split {cfg.data.train_split!r}): validation accuracy will not "
                    "measure generalization; use data.train_split=train or data.val_split=null",
                    stacklevel=5,
                )
        else:
            val_split = None
        set_precision(cfg.precision)
        self.train_split = train_split
        self.sampler = build_train_sampler(cfg, train_split).to(self.device)
        self.val_set = None
        if val_split is not None:  # rank 0 writes the shared episode file first, the others read it
            if dist.is_main:
                self.val_set = val_episode_set(cfg, val_split, self._runs_root)
            dist.barrier("barrier after rank 0 made the validation episode set")
            if not dist.is_main:
                self.val_set = val_episode_set(cfg, val_split, self._runs_root)
        self._val_episodes: list[Any] | None = None  # the validation episodes on the device, built on first use
        if self.deterministic:
            set_deterministic(cfg.seed)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed % 2**32)
        random.seed(cfg.seed)
        self.learner = build_learner(cfg, t.n_way, train_split.image_shape, train_split.class_names)
        check_learner(self.learner, dist.world_size)
        if self._device_requested:  # else the model stays where it was built, and the episodes follow it
            self.learner.to(self.device)
        self.device = model_device(self.learner)
        if t.compile:
            compile_backbone(self.learner, cfg.learner.name)
        init_info = None
        if cfg.model.init_from is not None and not self.resume:  # a resumed run restores its own weights
            init_info = load_backbone_weights(self.learner, cfg.model.init_from)
        self.optimizer = torch.optim.Adam(self.learner.parameters(), lr=t.lr, weight_decay=t.weight_decay)
        mb, step, gamma = t.meta_batch, t.lr_step_episodes, t.lr_gamma
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, (lambda k: gamma ** ((k * mb) // step)) if step else (lambda k: 1.0)
        )
        _label_norm_layers(self.learner)
        if payload is not None:
            self._restore(payload)
        if dist.is_main:
            self._write_run_files(restart, init_info)
        self._sync_lr_scale()

    def _write_run_files(self, restart: bool, init_info: dict[str, Any] | None) -> None:
        """Rank 0: the run folder, its lock, config.yaml, env.json (world size, backend), init_from.json, the log."""
        cfg = self.cfg
        prepare_run_dir(self.run_dir, resume=self.resume)
        if not self._locked:  # a new run's directory exists only now
            self._lock()
        if restart:
            (self.run_dir / "train_log.csv").unlink(missing_ok=True)
        with self._writing("config.yaml, env.json, init_from.json and train_log.csv"):
            save_config(cfg, self.run_dir / "config.yaml")
            numerics = {
                "precision": cfg.precision,
                "tf32": torch.backends.cuda.matmul.allow_tf32,
                "deterministic": self.deterministic,
            }
            write_env(
                self.run_dir, resumed=self.resume, config_changes=self._config_changes, device=self.device,
                numerics=numerics, distributed=self.dist.describe(),
            )  # fmt: skip
            if init_info is not None:
                write_json(self.run_dir / "init_from.json", init_info)
            self.log = TrainLog(self.run_dir / "train_log.csv", self.state.episodes_done if self.resume else None)

    def _lock(self) -> None:
        self.locks.enter_context(run_lock(self.run_dir))
        self._locked = True

    def _verified_last(self) -> dict[str, Any]:
        """``last.pt`` after its hash check, ``config.yaml`` vs its config, and the resume config vs its config."""
        _, payload = read_verified_checkpoint(self.run_dir, "last")
        if payload.get("format") != CHECKPOINT_FORMAT:
            raise DataError(
                f"{self.run_dir / 'checkpoints' / 'last.pt'} has checkpoint format {payload.get('format')!r}, "
                f"this fewshot writes {CHECKPOINT_FORMAT}; resume it with the fewshot version that wrote it"
            )
        self._config_changes = check_resume_changes(
            with_current_names(payload["config"]), config_to_dict(self.cfg), self.run_dir
        )
        return payload

    def _restore(self, payload: dict[str, Any]) -> None:
        if payload["train_fingerprint"] != self.train_split.fingerprint:  # every rank checks its own data
            raise DataError(
                f"cannot resume {str(self.run_dir)!r} exactly: the training split {self.cfg.data.train_split!r} "
                "differs from the one the run started on (its fingerprint changed: other data or preprocessing "
                "options); restore the original data or start a new run"
            )
        self.learner.load_state_dict(payload["model"])  # a checkpoint of N ranks loads on M: the state is one model
        self.optimizer.load_state_dict(payload["optimizer"])
        self.scheduler.load_state_dict(payload["scheduler"])
        known = {f.name for f in fields(TrainState)}
        self.state = TrainState(**{k: v for k, v in payload["state"].items() if k in known})
        set_rng_state(payload["rng"])
        self._saved_episode = self.state.episodes_done

    # ------------------------------------------------------------------------------------------- helpers
    def _lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _sync_lr_scale(self) -> None:
        """Norm layers whose rates follow the learning rate (``on_lr_scale``) hear of every change of lr / base lr."""
        factor = self._lr() / self.cfg.train.lr
        if self._lr_follows and factor != self._rate_factor:
            notify_lr_scale(self.learner, factor)
        self._rate_factor = factor

    def _checkpoint_payload(self, status: str) -> dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "status": status,
            "episode": self.state.episodes_done,
            "model": self.learner.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "state": asdict(self.state),
            "rng": get_rng_state(),
            "image_shape": list(self.train_split.image_shape),
            "train_fingerprint": self.train_split.fingerprint,
            "config": config_to_dict(self.cfg),
        }

    @contextlib.contextmanager
    def _writing(self, what: str):  # noqa: ANN202 - a context manager
        """Turn an OSError while writing ``what`` into a StorageError that says what is intact and how to go on."""
        try:
            yield
        except OSError as exc:
            if self._saved_episode is None:
                kept = "there is no checkpoint yet; start the run again in place with the same command"
            else:
                kept = (
                    f"checkpoints/last.pt still holds the last complete checkpoint (episode {self._saved_episode}); "
                    f"continue with `run_episode.py train --resume {self.run_dir}`"
                )
            raise StorageError(
                f"could not write {what} in {str(self.run_dir)!r} ({exc.strerror or exc}: disk full, read-only "
                f"folder or quota); {kept} once the folder can be written again"
            ) from exc

    def _save_last(self, status: str) -> None:
        if not self.dist.is_main:
            return
        with self._writing("checkpoints/last.pt"):
            save_checkpoint(self._checkpoint_payload(status), self.run_dir / "checkpoints" / "last.pt")
        self._saved_episode = self.state.episodes_done

    def _save_best(self, val_acc: float | None) -> None:
        self.state.best_val_acc, self.state.best_episode = val_acc, self.state.episodes_done
        if not self.dist.is_main:
            return
        payload = {
            "format": CHECKPOINT_FORMAT,
            "episode": self.state.episodes_done,
            "val_acc": val_acc,
            "model": self.learner.state_dict(),
            "image_shape": list(self.train_split.image_shape),
            "config": config_to_dict(self.cfg),
        }
        with self._writing("checkpoints/best.pt"):
            save_checkpoint(payload, self.run_dir / "checkpoints" / "best.pt")

    def metrics(self, status: str, error: str | None = None) -> dict[str, Any]:
        s = self.state
        busy = s.step_seconds + s.overhead_seconds
        out = {
            "status": status,
            "episodes_done": s.episodes_done,
            "episodes_total": self.cfg.train.episodes,
            "best_val_acc": s.best_val_acc,
            "best_episode": s.best_episode,
            "last_val_acc": s.last_val_acc,
            "train_seconds": round(s.train_seconds, 3),
            "step_seconds": round(s.step_seconds, 3),
            "overhead_seconds": round(s.overhead_seconds, 3),
            "val_seconds": round(s.val_seconds, 3),
            "episodes_per_second": s.episodes_done / busy if busy > 0 else None,
            "overhead_fraction": s.overhead_seconds / busy if busy > 0 else None,
            "val_episode_set": str(self.val_set.path) if self.val_set is not None else None,
            "updated": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        if error is not None:
            out["error"] = error
        return out

    def _write_metrics(self, status: str, error: str | None = None) -> dict[str, Any]:
        m = self.metrics(status, error)
        if not self.dist.is_main:
            return m
        with self._writing("metrics.json"):
            write_json(self.run_dir / "metrics.json", m)
        return m

    def _validate(self) -> float:
        """Mean accuracy over the fixed validation episodes (``learner.predict`` changes no model state).

        Every episode of the set has the same number of queries, so the mean of per-episode accuracies is
        computed exactly as total correct / total queries (equal accuracies compare equal: ties are real ties).
        On several ranks each scores its contiguous share of the episodes and the counts are summed.
        """
        policy, correct, total = self.cfg.eval.norm_policy, 0, 0
        if self._val_episodes is None:
            self._val_episodes = [_to_device(ep, self.device) for ep in self.val_set.episodes]
        episodes = self._val_episodes
        for i in split_evenly(len(episodes), self.dist):
            ep = episodes[i]
            logits = self.learner.predict(ep, policy=policy)
            correct = correct + (logits.argmax(-1) == ep.query_y).sum()  # summed on the device, read once
            total += int(ep.query_y.numel())
        if self.dist.active:
            counts = torch.tensor([float(correct), float(total)], dtype=torch.float64, device=self.dist.device)
            correct, total = (int(v) for v in self.dist.all_reduce_sum_(counts, "all-reduce of validation counts"))
        val_acc = int(correct) / total
        s = self.state
        s.last_val_acc, s.last_val_episode = val_acc, s.episodes_done
        if s.best_val_acc is None or val_acc > s.best_val_acc:  # ties keep the earliest
            self._save_best(val_acc)
        return val_acc

    def _log_row(self, lr: float, val_acc: float | None) -> None:
        s = self.state
        n = s.log_count
        if not self.dist.is_main:
            s.log_loss, s.log_acc, s.log_count = 0.0, 0.0, 0
            return
        with self._writing("train_log.csv"):
            self.log.write(
                s.episodes_done, s.log_loss / n if n else None, s.log_acc / n if n else None, lr, s.train_seconds,
                val_acc,
            )  # fmt: skip
        s.log_loss, s.log_acc, s.log_count = 0.0, 0.0, 0

    # ----------------------------------------------------------------------------------------------- loop
    def _elapsed(self) -> float:
        return self._base_seconds + (_clock() - self._session_start)

    def _step(self, start: int) -> tuple[dict[str, float], float, float, float]:
        """Meta-step on episodes ``start .. start + meta_batch - 1``: (metrics, lr used, model start, model end)."""
        t, dist = self.cfg.train, self.dist
        self._in_step = True
        batch = [_to_device(self.sampler[i], self.device) for i in local_episodes(start, t.meta_batch, dist)]
        t1 = _clock()
        lr = self._lr()
        self.optimizer.zero_grad(set_to_none=True)
        with (
            syncing_norm_stats(NormStatsSync(dist) if dist.active else None),
            autocast(self.cfg.precision, self.device),
        ):
            loss, m = self.learner.meta_loss(batch, policy=t.norm_policy)
        m = mean_over_ranks(m, dist)  # every rank sees the whole meta-batch's metrics (and stops together)
        if not isinstance(m["loss"], torch.Tensor) or not defers_host_reads(m["loss"]):  # free on the CPU: now
            self._check_finite(float(m["loss"]), start, start + t.meta_batch - 1)
        loss.backward()
        average_gradients(self.learner.parameters(), dist)
        self.optimizer.step()
        self.scheduler.step()
        self._sync_lr_scale()
        t2 = _clock()
        self.state.episodes_done += t.meta_batch
        self._in_step = False
        return m, lr, t1, t2

    def _check_finite(self, loss: float, first: int, last: int) -> None:
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"training loss is {loss} at episodes {first}..{last}: training diverged; lower train.lr (now "
                f"{self._lr():g}) or check norm {self.cfg.model.norm!r}; checkpoints/last.pt holds the last saved state"
            )

    def _flush_metrics(self) -> None:
        """Read the pending steps' loss and accuracy (one device-to-host copy) into the log accumulators.

        Learners return their metrics as 0-dim tensors; they are read only here, before a log row, a checkpoint
        or a validation, so a step on a device never waits for the host. The norm layers' device-side checks
        (skipped non-finite state updates, which warn) are read here too, and the progress bar's averages
        advance. A non-finite loss among the steps stops training before anything is saved, naming the episodes
        since the last read.
        """
        read_device_checks(self.learner)
        if not self._pending:
            return
        mb, s = self.cfg.train.meta_batch, self.state
        rows = [[torch.as_tensor(v, dtype=torch.float64, device=self.device) for v in pair] for pair in self._pending]
        read = torch.stack([torch.stack(r) for r in rows]).tolist()  # the one device-to-host copy
        first, self._pending, self._pending_from = self._pending_from, [], s.episodes_done
        for loss, acc in read:  # in step order, as the floats were always added
            s.log_loss += loss * mb
            s.log_acc += acc * mb
            s.log_count += mb
        self._show(read)
        self._check_finite(sum(loss for loss, _ in read), first, s.episodes_done - 1)

    def _show(self, read: list[list[float]]) -> None:
        """Advance the progress bar's moving averages of loss and accuracy over the steps just read, in order."""
        if self._bar is None or self._bar.disable:
            return
        for loss, acc in read:
            prev = self._ema
            self._ema = (loss, acc) if prev is None else (0.95 * prev[0] + 0.05 * loss, 0.95 * prev[1] + 0.05 * acc)
        ema_loss, ema_acc = self._ema
        self._bar.set_postfix(loss=f"{ema_loss:.3f}", acc=f"{ema_acc:.3f}", val=self.state.last_val_acc, refresh=False)

    def _after_step(self, start: int, lr: float) -> float:
        """Validation, log row, periodic checkpoint and metrics as due after a step; returns validation seconds."""
        t, s = self.cfg.train, self.state
        val_seconds, val_acc = 0.0, None
        validate = self.val_set is not None and start // t.val_every != s.episodes_done // t.val_every
        log = validate or start // t.log_every != s.episodes_done // t.log_every
        checkpoint = _clock() - self._last_checkpoint >= t.checkpoint_minutes * 60.0
        if validate or log or checkpoint:
            self._flush_metrics()
        if log:  # fixed by the episode count: a resumed run changes the state where this run did
            enforce_state_bounds(self.learner)
        if validate:
            tv = _clock()
            val_acc = self._validate()
            val_seconds = _clock() - tv
            s.val_seconds += val_seconds
        s.train_seconds = self._elapsed()
        if log:
            self._log_row(lr, val_acc)
        if checkpoint:
            self._save_last("running")
            self._last_checkpoint = _clock()
        if checkpoint or val_acc is not None:
            self._write_metrics("running")
        return val_seconds

    def run(self) -> TrainResult:
        t, s = self.cfg.train, self.state
        budget = t.max_minutes * 60.0 if t.max_minutes is not None else None
        bar = tqdm(
            total=t.episodes, initial=min(s.episodes_done, t.episodes), unit="ep", desc=self.cfg.name,
            smoothing=0.05, mininterval=0.5, disable=self.quiet or not sys.stderr.isatty(), dynamic_ncols=True,
        )  # fmt: skip
        self._session_start, self._base_seconds = _clock(), s.train_seconds
        self._pending_from = s.episodes_done
        self._last_checkpoint = self._session_start
        self._bar = bar
        lr = self._lr()
        self._write_metrics("running")
        try:
            with stop_on_signals("stopping after this step, saving checkpoints/last.pt (again: abort)") as stop:
                while True:
                    t0 = _clock()
                    s.train_seconds = self._elapsed()
                    if s.episodes_done >= t.episodes:
                        status = "finished"
                        break
                    out_of_budget, signalled = self._agree(
                        budget is not None and s.train_seconds >= budget, stop.is_set()
                    )
                    if out_of_budget:
                        status = "stopped_budget"
                        break
                    if signalled:
                        raise KeyboardInterrupt
                    start = s.episodes_done
                    m, lr, t1, t2 = self._step(start)
                    s.step_seconds += t2 - t1
                    self._pending.append((m["loss"], m["acc"]))
                    bar.update(t.meta_batch)  # the loss/acc shown advance when the metrics are read
                    val_seconds = self._after_step(start, lr)
                    s.overhead_seconds += (t1 - t0) + (_clock() - t2) - val_seconds
                    if self.callback is not None:  # loss and acc are read only if the callback looks at them
                        self.callback(StepInfo(s.episodes_done, m["loss"], m["acc"], lr, s.train_seconds))
            return self._finish(status, lr)
        except KeyboardInterrupt:
            if not self._in_step:  # between steps the state is consistent: save it for --resume
                self._flush_metrics()
                s.train_seconds = self._elapsed()
                self._save_last("interrupted")
                self._write_metrics("interrupted")
            raise
        except BaseException as exc:
            with contextlib.suppress(StorageError):  # the disk may be what failed: keep the first error
                self._write_metrics("failed", f"{type(exc).__name__}: {exc}")
            raise
        finally:
            bar.close()
            self.log.close()

    def _agree(self, *flags: bool) -> tuple[bool, ...]:
        """Each flag true on any rank (the budget clock and signals are per process; the decision is shared)."""
        if not self.dist.active:
            return flags
        votes = torch.tensor([float(f) for f in flags], dtype=torch.float64, device=self.dist.device)
        return tuple(bool(v > 0) for v in self.dist.all_reduce_sum_(votes, "all-reduce of the stop decision"))

    def _finish(self, status: str, lr: float) -> TrainResult:
        s = self.state
        self._flush_metrics()
        val_acc = None
        if self.val_set is not None and s.last_val_episode != s.episodes_done:
            tv = _clock()
            val_acc = self._validate()
            s.val_seconds += _clock() - tv
        elif self.val_set is None:
            self._save_best(None)  # without validation the final model is the selected one
        if s.log_count or val_acc is not None:
            self._log_row(lr, val_acc)
        self._save_last(status)
        metrics = self._write_metrics(status)
        return TrainResult(self.run_dir, status, s.episodes_done, s.best_val_acc, s.best_episode, metrics)


def _to_device(episode: Any, device: torch.device) -> Any:
    """Where the trainer moves an episode to the rank's device (tests patch it, e.g. to train in float64)."""
    return to_device(episode, device)


def train(
    cfg: ExperimentConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    callback: Callable[[StepInfo], Any] | None = None,
    train_split: ClassSplit | None = None,
    val_split: ClassSplit | None = None,
    runs_root: str | Path | None = None,
    deterministic: bool = False,
    device: torch.device | str | None = None,
) -> TrainResult:
    """Meta-train the learner of ``cfg``, writing everything into ``run_dir``.

    Args:
        cfg: the validated experiment config (:func:`fewshot.config.load_config`).
        run_dir: the run directory; must be absent or empty unless ``resume``.
        resume: continue the run saved in ``run_dir`` (``checkpoints/last.pt``) bit for bit.
        quiet: no progress bar (it is also off when stderr is not a terminal).
        callback: called with a :class:`StepInfo` after every meta-step.
        train_split: use this split instead of loading ``cfg.data.train_split`` (tests, notebooks).
        val_split: likewise for ``cfg.data.val_split`` (ignored when it is ``null``).
        runs_root: where ``_episode_sets/`` lives (default ``$FEWSHOT_RUNS`` or ``./runs``).
        deterministic: deterministic algorithms, cuBLAS workspace and seeds
            (:func:`fewshot.numerics.set_deterministic`): two runs on the same device give identical logs and
            checkpoints.
        device: where the model and episodes live (default: the config's ``device`` if it has one, else where
            the learner is built); under ``torchrun`` it also picks the backend (``gloo`` for CPU, ``nccl`` for
            CUDA).

    Returns:
        The :class:`TrainResult` (status ``finished`` or ``stopped_budget``).

    Raises:
        KeyboardInterrupt: Ctrl-C, SIGTERM or a callback raised it; ``last.pt`` was saved (status
            ``interrupted``) unless the interrupt came in the middle of a step.
        ConfigError: ``run_dir`` is not empty and ``resume`` is off, there is nothing to resume, the resumed config
            changes what was trained, or another process holds the run.
        DataError: ``last.pt`` is damaged or edited, or ``config.yaml`` differs from it.
        StorageError: the run directory cannot be written (checked before loading data) or a write failed.
        DistributedError: under ``torchrun``, the ranks could not start together or a rank stopped answering.
    """
    requested = device if device is not None else run_device(cfg.device)
    dist = from_env(requested)
    trainer = _Trainer(
        cfg, Path(run_dir), resume=resume, quiet=quiet, callback=callback, train_split=train_split,
        val_split=val_split, runs_root=runs_root, deterministic=deterministic, dist=dist,
        device_requested=requested is not None,
    )  # fmt: skip
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.train.threads or os.cpu_count() or 1)
    try:
        with restoring_numerics():
            trainer.setup()
            return trainer.run()
    finally:
        trainer.locks.close()
        torch.set_num_threads(previous_threads)
