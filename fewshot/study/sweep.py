"""Run a grid: train every planned run to its episode budget (resuming stopped ones), then evaluate it on the
support-size sweep and record the whitening diagnostics. Everything lives in the run's folder, so any run can be
executed by any machine, in any order, and a second invocation skips what is done.

Training goes through :func:`fewshot.training.trainer.train` (``resume=True`` when the folder holds a run), in
segments ending at multiples of ``diagnostics.spectrum_every``: after each segment the spectrum of every
whitening matrix in ``checkpoints/last.pt`` is appended to ``w_spectrum.csv``. A resume is exact (the trainer's
contract), so segmenting changes no weight. Evaluations go through
:func:`fewshot.evaluation.run_eval.evaluate_run` (reused when already present).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from fewshot.config.loader import load_config
from fewshot.study.grid import GridSpec, PlannedRun
from fewshot.study.reuse import REUSED_FILE, reuse_run
from fewshot.study.spectrum import append_spectrum
from fewshot.study.status import run_lock, run_status, waits_for

__all__ = ["SweepOutcome", "train_planned", "evaluate_planned", "diagnose_planned", "run_sweep"]


@dataclass(frozen=True)
class SweepOutcome:
    """What a sweep did: run keys per outcome (``skipped`` were finished before, ``failed`` raised, ``reused`` were
    taken from an existing run by the cell's ``reuse:``)."""

    trained: tuple[str, ...]
    evaluated: tuple[str, ...]
    skipped: tuple[str, ...]
    failed: tuple[str, ...]
    busy: tuple[str, ...]
    reused: tuple[str, ...] = ()


def _segment_end(done: int, stop_at: int, every: int) -> int:
    return min(stop_at, (done // every + 1) * every) if every > 0 else stop_at


def train_planned(
    run: PlannedRun,
    *,
    spectrum_every: int = 0,
    until_episodes: int | None = None,
    quiet: bool = True,
    callback: Callable[[Any], Any] | None = None,
    runs_root: str | Path | None = None,
    log: Callable[[str], Any] = print,
) -> bool:
    """Train ``run`` up to its target (or ``until_episodes``) from wherever its folder stands. Caller holds the lock.

    Returns whether training reached the target. A folder without ``checkpoints/last.pt`` (a run killed before its
    first checkpoint) is moved aside to ``<folder>.aside-<UTC time>``, never deleted, and the run restarts.
    """
    from fewshot.training.checkpoint import load_checkpoint
    from fewshot.training.run_dir import read_json, resume_config
    from fewshot.training.trainer import train

    folder = run.run_dir
    target = run.target_episodes
    stop_at = min(target, until_episodes) if until_episodes is not None else target
    if folder.is_dir() and any(folder.iterdir()) and not (folder / "checkpoints" / "last.pt").is_file():
        aside = folder.with_name(f"{folder.name}.aside-{datetime.now(timezone.utc):%Y%m%dT%H%M%SZ}")
        log(f"[sweep] {run.key}: folder has no checkpoint to resume; moved to {aside}")
        shutil.move(str(folder), aside)
    while True:
        done = int(read_json(folder / "metrics.json").get("episodes_done", 0)) if folder.is_dir() else 0
        if done >= stop_at:
            return done >= target
        end = _segment_end(done, stop_at, spectrum_every)
        overrides = [*run.overrides, f"train.episodes={end}"]
        resume = (folder / "checkpoints" / "last.pt").is_file()
        cfg = resume_config(folder, run.cell.config, overrides) if resume else load_config(run.cell.config, overrides)
        log(f"[sweep] {run.key}: {'resuming' if resume else 'training'} episodes {done}..{end} of {target}")
        result = train(cfg, folder, resume=resume, quiet=quiet, callback=callback, runs_root=runs_root)
        append_spectrum(folder, load_checkpoint(folder / "checkpoints" / "last.pt")["model"], result.episodes_done)


def evaluate_planned(run: PlannedRun, *, runs_root: str | Path | None = None, log: Callable[[str], Any] = print) -> int:
    """Evaluate a finished run at every (way, K, policy) of its cell (existing evaluations are reused).

    Returns the number of evaluations computed now.
    """
    from fewshot.evaluation.run_eval import evaluate_run

    spec = run.cell.evaluation
    computed = 0
    for way, shot, policy in spec.settings():
        ev = evaluate_run(
            run.run_dir, n_way=way, n_shot=shot, n_query=spec.queries, episodes=spec.episodes, policy=policy,
            runs_root=runs_root,
        )  # fmt: skip
        if not ev.reused:
            computed += 1
            log(f"[sweep] {run.key}: {way}-way {shot}-shot {policy}: {100 * ev.summary['mean']:.2f} "
                f"± {100 * ev.summary['ci95']:.2f} ({ev.summary['n']} episodes)")  # fmt: skip
    return computed


def diagnose_planned(run: PlannedRun, n_episodes: int, *, runs_root: str | Path | None = None) -> Path | None:
    """Write ``diagnostics/whiteness.csv`` of a finished run (skipped when it exists for the same checkpoint, and for
    a cell that is not evaluated)."""
    import csv

    from fewshot.evaluation.outputs import file_sha256
    from fewshot.evaluation.run_eval import checkpoint_file
    from fewshot.study.whiteness import WHITENESS_FILE, episode_diagnostics, summarize, write_whiteness
    from fewshot.training.build import build_split
    from fewshot.training.episode_sets import get_episode_set
    from fewshot.training.run_dir import load_run

    if n_episodes < 1 or not run.cell.evaluation.settings():
        return None
    path = run.run_dir / WHITENESS_FILE
    sha = file_sha256(checkpoint_file(run.run_dir))
    if path.is_file():
        with open(path, newline="", encoding="utf-8") as f:
            if {r["checkpoint_sha256"] for r in csv.DictReader(f)} == {sha}:
                return path
    loaded = load_run(run.run_dir)
    cfg, spec = loaded.cfg, run.cell.evaluation
    split = build_split(cfg, cfg.data.test_split)
    rows = []
    for way, shot, policy in spec.settings():
        eset = get_episode_set(
            split, way, shot, spec.queries, seed=cfg.eval.seed, count=spec.episodes,
            within_alphabet=cfg.eval.within_alphabet, root=runs_root,
        )  # fmt: skip
        per_episode = [episode_diagnostics(loaded.learner, eset.episodes[i], policy)
                       for i in range(min(n_episodes, spec.episodes))]  # fmt: skip
        for layer, m in summarize(per_episode).items():
            rows.append({"way": way, "shot": shot, "query": spec.queries, "policy": policy, "layer": layer, **m,
                         "checkpoint_sha256": sha})  # fmt: skip
    return write_whiteness(run.run_dir, rows)


def run_sweep(
    grid: GridSpec,
    runs: Sequence[PlannedRun],
    *,
    until_episodes: int | None = None,
    evaluate: bool = True,
    quiet: bool = True,
    callback: Callable[[Any], Any] | None = None,
    runs_root: str | Path | None = None,
    log: Callable[[str], Any] = print,
) -> SweepOutcome:
    """Train, evaluate and diagnose ``runs`` (planned from ``grid``) in order; finished work is skipped.

    A run that raises (diverged, bad data) is recorded as failed by the trainer and the sweep goes on with the
    next one; a run locked by another process is left to it. Ctrl-C stops the sweep after the trainer saved the
    current run (its next invocation resumes it).
    """
    from fewshot.errors import ConfigError

    trained, evaluated, skipped, failed, busy, reused = [], [], [], [], [], []
    for i, run in enumerate(runs):
        status = run_status(run)
        log(f"[sweep] ({i + 1}/{len(runs)}) {run.key}: {status.state}, {status.episodes_done}/{run.target_episodes} "
            f"episodes, {status.evals_done}/{status.evals_total} evaluations")  # fmt: skip
        if status.state == "failed":
            log(f"[sweep] {run.key}: skipped, it failed ({status.note}); inspect {run.run_dir}, remove it to retry")
            failed.append(run.key)
            continue
        if status.state == "running":
            log(f"[sweep] {run.key}: skipped, {status.note}")
            busy.append(run.key)
            continue
        if status.state == "todo" and waits_for(run):
            log(f"[sweep] {run.key}: skipped, {waits_for(run)}")
            busy.append(run.key)
            continue
        done_before = status.state == "finished" and status.evals_done == status.evals_total
        try:
            with run_lock(run):
                if status.state == "todo" and run.reuse_from is not None:
                    if not (run.run_dir / REUSED_FILE).is_file():  # not done by another machine meanwhile
                        source = reuse_run(run)  # a ConfigError stops the sweep: the grid names a wrong run
                        log(
                            f"[sweep] {run.key}: reused the finished run {source} (budget, config, checkpoints checked)"
                        )
                        reused.append(run.key)
                    reached = True
                else:
                    reached = status.state == "finished" or train_planned(
                        run, spectrum_every=grid.diagnostics.spectrum_every, until_episodes=until_episodes,
                        quiet=quiet, callback=callback, runs_root=runs_root, log=log,
                    )  # fmt: skip
                    if status.state != "finished" and reached:
                        trained.append(run.key)
                if reached and evaluate:
                    if evaluate_planned(run, runs_root=runs_root, log=log):
                        evaluated.append(run.key)
                    diagnose_planned(run, grid.diagnostics.whiteness_episodes, runs_root=runs_root)
        except ConfigError as exc:
            if "is being run by" in str(exc) or "locked by another process" in str(exc):
                log(f"[sweep] {run.key}: skipped, {exc}")
                busy.append(run.key)
                continue
            raise
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # the trainer recorded it in metrics.json (a reuse: nothing was written); go on
            log(f"[sweep] {run.key}: FAILED: {type(exc).__name__}: {exc}")
            failed.append(run.key)
            continue
        if done_before:
            skipped.append(run.key)
    return SweepOutcome(tuple(trained), tuple(evaluated), tuple(skipped), tuple(failed), tuple(busy), tuple(reused))
