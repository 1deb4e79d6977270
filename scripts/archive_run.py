#!/usr/bin/env python
"""Copy finished run directories into ``results/runs/`` so that their numbers are committed with their evidence.

A run directory (``runs/<name>/<UTC time>-<sha>/``) is not committed: it lives in the work tree of one session.
This copies what a reader needs to check and re-use a result (``config.yaml``, ``env.json`` with the training
command, ``metrics.json``, ``train_log.csv``, ``init_from.json`` naming the backbone a second stage started from,
every ``eval/*/`` folder with its per-episode ``episodes.csv`` and ``summary.json`` holding the eval command, and
the study's ``diagnostics/`` files) to ``results/runs/<name>/<UTC time>-<sha>/``, and the evaluated weights
``checkpoints/best.pt`` when they are at most 1 MiB (a Conv-4 model is about 0.45 MiB), so that ``eval``,
``predict``, ``embed`` and ``export`` work on the archived folder at once. A whitening layer's study run also has
``w_spectrum.csv`` (W's spectrum per layer over training), copied too, and a reused study run its
``reused_from.json``. ``last.pt`` (the full training state
for ``--resume``) and larger checkpoints are never copied (they are named on stderr); ``.gitignore`` lets
``results/**/*.pt`` into git and keeps every other ``.pt`` out.
An existing archive is refreshed file by file: files are replaced by the run's newer versions, nothing is deleted.
A run a live process holds (training, evaluation, or a sweep still writing its diagnostics) is refused: its
files are not final yet.

A study run (``runs/sweeps/<grid>/<cell>/seed<s>``) goes to ``results/study/sweeps/<grid>/<cell>/seed<s>`` with
``--dest results/study/sweeps/<grid>``, where ``sweep report --runs-root results/study`` reads it.

Usage: python scripts/archive_run.py RUN [RUN ...] [--dest DIR]
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from fewshot.training.file_lock import lock_owner  # noqa: E402

FILES = (
    "config.yaml",
    "env.json",
    "metrics.json",
    "train_log.csv",
    "init_from.json",
    "reused_from.json",
    "w_spectrum.csv",
)
#: Folders copied whole: per-episode evaluations and the study's diagnostics (W spectra, whiteness).
FOLDERS = ("eval", "diagnostics")
#: Checkpoints shipped with an archived run, and the largest size shipped (git holds results, not a model zoo).
CHECKPOINTS = ("best.pt",)
MAX_CHECKPOINT_BYTES = 1 << 20


def archive(run: Path, dest_root: Path) -> Path:
    if not (run / "config.yaml").is_file():
        raise SystemExit(f"error: {run} is not a run directory (no config.yaml); pass runs/<name>/<time>-<sha>")
    owner = lock_owner(run / ".lock")
    if owner is not None:
        raise SystemExit(
            f"error: {run} is in use ({owner}): a training, evaluation or sweep still writes to it; archive it when "
            "that has finished (`run_episode.py sweep status` shows a study run's state)"
        )
    dest = dest_root / run.parent.name / run.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in FILES:
        if (run / name).is_file():
            shutil.copy2(run / name, dest / name)
    for name in FOLDERS:
        if (run / name).is_dir():
            shutil.copytree(run / name, dest / name, dirs_exist_ok=True)
    for name in CHECKPOINTS:
        source = run / "checkpoints" / name
        if not source.is_file():
            continue
        size = source.stat().st_size
        if size > MAX_CHECKPOINT_BYTES:
            print(
                f"not copied: {source} is {size / 2**20:.2f} MiB > {MAX_CHECKPOINT_BYTES / 2**20:.0f} MiB",
                file=sys.stderr,
            )
            continue
        (dest / "checkpoints").mkdir(exist_ok=True)
        shutil.copy2(source, dest / "checkpoints" / name)
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--dest", type=Path, default=ROOT / "results" / "runs")
    args = parser.parse_args(argv)
    for run in args.runs:
        print(archive(run, args.dest))
    return 0


if __name__ == "__main__":
    sys.exit(main())
