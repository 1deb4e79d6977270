"""Reusing a finished run as a grid cell's run (the cell's ``reuse: {SEED: FOLDER}``), after checking it is that run.

A grid cell may name, per seed, a finished run made outside the grid with exactly the cell's config: the MAML grid
compares TaskNorm with the existing BN run at its own budget instead of training BN again. Before the run folder
of the cell is created from it, the source must

* be a finished run (``metrics.json`` status ``finished``) of exactly the cell's target episodes, with
  ``checkpoints/best.pt``;
* have been trained with the cell's resolved config: every key equal except those of :data:`IGNORED_KEYS`
  (the run's name, which the grid sets to ``<grid>_<cell>``, and what a resume may change without changing the
  training: data root, threads, checkpoint interval, time limit), each differing key named otherwise;
* not be held by a live process (training, resuming or evaluating it);
* pass :func:`fewshot.training.run_dir.verify_run` (every checkpoint's SHA-256, and ``config.yaml`` against the
  config each checkpoint was trained with), and so must the copy before it is renamed into place.

Then its record (``config.yaml``, ``env.json`` with the original training command, ``metrics.json``,
``train_log.csv``, the checkpoints, and ``w_spectrum.csv``/``init_from.json`` where present) is copied into the
cell's run folder, beside ``reused_from.json`` (the source folder relative to the project root, the SHA-256 of the
copied ``best.pt``, the git commit that trained it, the time). Its
evaluations and diagnostics are not copied: the grid makes its own on its own episode files. The source is never
changed.
"""

from __future__ import annotations

import shutil
from datetime import datetime, timezone
from pathlib import Path

from fewshot.config.loader import config_to_dict, diff_configs
from fewshot.errors import ConfigError
from fewshot.study.grid import PlannedRun
from fewshot.training.run_dir import RESUMABLE_KEYS

__all__ = ["REUSED_FILE", "IGNORED_KEYS", "reuse_run"]

REUSED_FILE = "reused_from.json"
#: Config keys a reused run may differ in from the cell: its name, and keys a resume may change (``RESUMABLE_KEYS``)
#: that leave the training as it is. ``train.log_every`` is not among them: on a device it fixes where SWBN's cap
#: on ``W`` is applied.
IGNORED_KEYS = frozenset({"name", *RESUMABLE_KEYS} - {"device", "train.episodes", "train.log_every"})
_COPIED = ("config.yaml", "env.json", "metrics.json", "train_log.csv", "init_from.json", "w_spectrum.csv")


def reuse_run(run: PlannedRun) -> Path:
    """Create ``run.run_dir`` from the finished run its cell names for its seed; returns the source folder.

    Raises:
        ConfigError: the source is missing, unfinished, of another budget or config, or ``run.run_dir`` holds files.
        DataError: a checkpoint of the source is damaged or disagrees with its ``config.yaml``.
    """
    from fewshot.config.loader import configs_dir
    from fewshot.evaluation.outputs import file_sha256
    from fewshot.training.run_dir import lock_held, read_json, verify_run, write_json

    source = run.reuse_from
    where = f"{run.key}: reuse {str(source)!r}"
    if source is None:
        raise ConfigError(f"{run.key}: its cell names no run to reuse for seed {run.seed}")
    if not (source / "config.yaml").is_file():
        raise ConfigError(f"{where} is not a run folder (no config.yaml); name a finished run's folder")
    metrics = read_json(source / "metrics.json")
    done = int(metrics.get("episodes_done", 0))
    if metrics.get("status") != "finished" or done != run.target_episodes:
        raise ConfigError(
            f"{where}: it is {metrics.get('status', 'without metrics.json')} at {done} training episodes; the cell "
            f"needs a finished run of exactly {run.target_episodes}; remove 'reuse' to train the cell instead"
        )
    if not (source / "checkpoints" / "best.pt").is_file():
        raise ConfigError(f"{where} has no checkpoints/best.pt (the evaluated weights); it cannot be evaluated")
    if lock_held(source):
        raise ConfigError(f"{where} is held by a live process (training or evaluating it); wait for it to finish")
    trained = config_to_dict(verify_run(source))
    diffs = [d for d in diff_configs(trained, config_to_dict(run.cfg)) if d[0] not in IGNORED_KEYS]
    if diffs:
        listed = "; ".join(f"{k}: run {a!r}, cell {b!r}" for k, a, b in diffs)
        raise ConfigError(
            f"{where} was trained with another config than the cell's ({listed}); reuse only a run of exactly the "
            "cell's config, or remove 'reuse' to train the cell"
        )
    if run.run_dir.exists() and (not run.run_dir.is_dir() or any(run.run_dir.iterdir())):
        raise ConfigError(f"{where}: {run.run_dir} already holds files; nothing is overwritten")
    # Built beside the run folder and renamed into place: an interrupted copy never looks like a run.
    staging = run.run_dir.with_name(f"{run.run_dir.name}.reusing")
    if staging.exists():
        shutil.rmtree(staging)
    (staging / "checkpoints").mkdir(parents=True)
    for name in _COPIED:
        if (source / name).is_file():
            shutil.copy2(source / name, staging / name)
    for checkpoint in sorted((source / "checkpoints").glob("*.pt")):
        shutil.copy2(checkpoint, staging / "checkpoints" / checkpoint.name)
    verify_run(staging)  # the copy, not only the source, holds what was checked
    root = configs_dir().parent
    write_json(staging / REUSED_FILE, {
        "source": str(source.relative_to(root)) if source.is_relative_to(root) else str(source),
        "best_sha256": file_sha256(staging / "checkpoints" / "best.pt"), "source_name": trained.get("name"),
        "git_commit": read_json(source / "env.json").get("git_commit"),
        "reused": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    })  # fmt: skip
    if run.run_dir.is_dir():
        run.run_dir.rmdir()  # empty (checked above)
    staging.rename(run.run_dir)
    return source
