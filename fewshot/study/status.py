"""The state of each planned run, read from its folder alone, and the per-run lock that marks it running.

States:

* ``todo``: no run folder yet (a second stage whose first stage is not finished notes what it waits for).
* ``running``: a sweep process holds the run's lock (``<run>.lock`` beside the folder, an ``flock`` recording
  pid, host and start time; the operating system releases it when that process ends, however it ends).
* ``stopped``: the folder holds a run below its episode target and nobody is running it (interrupted, stopped at
  ``--until-episodes``, or killed); the next sweep resumes it from ``checkpoints/last.pt``.
* ``failed``: the trainer recorded an error (``metrics.json`` status ``failed``); the sweep skips it until the
  folder is inspected and removed.
* ``finished``: the target number of training episodes is done. Evaluations are counted beside the state.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from fewshot.evaluation.outputs import EVAL_DIR
from fewshot.study.grid import PlannedRun
from fewshot.study.reuse import REUSED_FILE
from fewshot.training.file_lock import LockOwner, hold_lock, lock_owner
from fewshot.training.run_dir import read_json

__all__ = [
    "STATES", "RunStatus", "lock_path", "read_lock", "run_lock", "run_status", "format_status", "waits_for",
]  # fmt: skip

STATES = ("todo", "running", "stopped", "failed", "finished")


@dataclass(frozen=True)
class RunStatus:
    """What a run folder says about a planned run.

    Attributes:
        run: the planned run.
        state: one of :data:`STATES`.
        episodes_done: training episodes in the folder's ``metrics.json`` (0 when absent).
        minutes: training wall time so far (``train_seconds`` / 60).
        evals_done: evaluations of the grid's support-size sweep present under ``eval/``.
        evals_total: evaluations the grid asks for.
        note: who holds the lock, the error of a failed run, or a hint.
    """

    run: PlannedRun
    state: str
    episodes_done: int
    minutes: float
    evals_done: int
    evals_total: int
    note: str = ""


def lock_path(run: PlannedRun) -> Path:
    """``<run folder>.lock``: beside the folder, so that a new run still starts in an empty folder."""
    return run.run_dir.with_name(run.run_dir.name + ".lock")


def read_lock(run: PlannedRun) -> LockOwner | None:
    """Who holds ``run``'s lock, or ``None`` if no live process does (a dead process's lock is released)."""
    return lock_owner(lock_path(run))


@contextmanager
def run_lock(run: PlannedRun) -> Iterator[None]:
    """Hold ``run``'s lock inside the block (:func:`~fewshot.training.file_lock.hold_lock`; the file is removed
    on release).

    Raises:
        ConfigError: another live process holds it.
    """
    path = lock_path(run)

    def busy(owner: LockOwner) -> str:
        return f"run {run.key} is being run by {owner} (lock {path}); wait for it, or stop that process"

    with hold_lock(path, busy, remove=True):
        yield


def _evals_done(run: PlannedRun) -> int:
    """Count the grid's evaluations present in the run's ``eval/`` folder (by way, shot, query, n, policy)."""
    spec = run.cell.evaluation
    wanted = {(w, k, spec.queries, spec.episodes, p) for w, k, p in spec.settings()}
    found = set()
    folder = run.run_dir / EVAL_DIR
    for summary_path in folder.glob("*/summary.json") if folder.is_dir() else ():
        s = read_json(summary_path)
        if s.get("checkpoint") != "best":
            continue
        found.add((s.get("way"), s.get("shot"), s.get("query"), s.get("n"), s.get("policy")))
    return len(wanted & found)


def waits_for(run: PlannedRun) -> str | None:
    """Why a second-stage run (``after:``) cannot start yet, or ``None`` when its first stage is finished."""
    folder = run.after_dir
    if folder is None:
        return None
    if (
        read_json(folder / "metrics.json").get("status") == "finished"
        and (folder / "checkpoints" / "best.pt").is_file()
    ):
        return None
    return f"waits for {run.cell.after}/seed{run.seed} to finish (it starts from that run's backbone)"


def run_status(run: PlannedRun) -> RunStatus:
    """The :class:`RunStatus` of ``run`` from its folder and lock."""
    total = len(run.cell.evaluation.settings())
    lock = read_lock(run)
    folder = run.run_dir
    if not folder.is_dir() or not any(folder.iterdir()):
        if lock is not None:
            return RunStatus(run, "running", 0, 0.0, 0, total, f"starting, pid {lock.pid} on {lock.host}")
        reuse = f"reuses the finished run {run.reuse_from}" if run.reuse_from is not None else ""
        return RunStatus(run, "todo", 0, 0.0, 0, total, waits_for(run) or reuse)
    metrics = read_json(folder / "metrics.json")
    done = int(metrics.get("episodes_done", 0))
    minutes = float(metrics.get("train_seconds", 0.0)) / 60.0
    evals = _evals_done(run)
    if lock is not None:
        return RunStatus(run, "running", done, minutes, evals, total, f"pid {lock.pid} on {lock.host}")
    if metrics.get("status") == "failed":
        return RunStatus(run, "failed", done, minutes, evals, total, str(metrics.get("error", ""))[:120])
    reused = read_json(folder / REUSED_FILE).get("source")
    if reused:
        note = f"reused from {reused}"
    elif run.reuse_from is not None:  # e.g. trained here before 'reuse:' was added, or moved aside and retrained
        note = f"trained here, not reused: the cell's reuse ({run.reuse_from}) applies only to an empty folder"
    else:
        note = ""
    if done >= run.target_episodes and (folder / "checkpoints" / "best.pt").is_file():
        return RunStatus(run, "finished", done, minutes, evals, total, note)
    has_last = (folder / "checkpoints" / "last.pt").is_file()
    if not has_last:
        note = "no checkpoint yet: restarts from episode 0 (the folder is kept aside)"
    return RunStatus(run, "stopped", done, minutes, evals, total, note)


def format_status(statuses: Sequence[RunStatus], commands: Sequence[str]) -> str:
    """A plain-text table: one row per run in run order, then one line per state count."""
    header = ("#", "run", "state", "episodes", "minutes", "evals", "command")
    rows = [
        (str(i + 1), s.run.key, s.state, f"{s.episodes_done}/{s.run.target_episodes}", f"{s.minutes:.1f}",
         f"{s.evals_done}/{s.evals_total}", cmd)
        for i, (s, cmd) in enumerate(zip(statuses, commands, strict=True))
    ]  # fmt: skip
    widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(header)]
    lines = ["  ".join(v.ljust(w) for v, w in zip(header, widths, strict=True)).rstrip()]
    for row, s in zip(rows, statuses, strict=True):
        line = "  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip()
        lines.append(line + (f"   # {s.note}" if s.note else ""))
    counts = {state: sum(s.state == state for s in statuses) for state in STATES}
    minutes = sum(s.minutes for s in statuses)
    lines.append(
        f"{len(statuses)} runs: " + ", ".join(f"{n} {state}" for state, n in counts.items() if n)
        + f"; {minutes:.1f} training minutes spent"
    )  # fmt: skip
    return "\n".join(lines)
