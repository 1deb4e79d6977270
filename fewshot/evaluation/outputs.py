"""Evaluation outputs of a run directory: ``<run>/eval/<key>/episodes.csv`` and ``summary.json``.

One sub-folder per (episode set, policy, checkpoint) evaluated; the key is ``<first 16 hex digits of the
episode set's content hash>-<policy>``, with ``-last`` appended when the ``last`` checkpoint was scored.

``episodes.csv`` has one row per episode, in the order of the episode file, so the CI can be recomputed and
runs can be paired episode by episode::

    position,index,acc,n_correct,n_query_total

``summary.json`` (accuracies as fractions in [0, 1]; see :mod:`fewshot.evaluation.stats` for the conventions)::

    {"mean", "ci95", "std", "n", "way", "shot", "query", "policy", "seed", "split", "dataset", "protocol",
     "episode_file", "episode_hash", "checkpoint", "checkpoint_sha256", "eval_seconds", "created_utc",
     "ci_formula"}

Files are written atomically (temp file + ``os.replace``). A summary is reused only when its episode hash,
policy and checkpoint digest all match (:func:`find_reusable`). An evaluation folder whose summary cannot be read
is reported by :func:`list_evals` (DataError), never dropped from a table.
"""

from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from episodes.cache import atomic_write_bytes
from fewshot.errors import DataError
from fewshot.evaluation.evaluate import EvalResult
from fewshot.provenance import command_line

__all__ = [
    "EVAL_DIR",
    "EPISODE_COLUMNS",
    "CI_FORMULA",
    "atomic_write_text",
    "eval_key",
    "file_sha256",
    "write_eval",
    "read_summary",
    "read_episode_accuracies",
    "list_evals",
    "find_reusable",
]

EVAL_DIR = "eval"
EPISODE_COLUMNS = ("position", "index", "acc", "n_correct", "n_query_total")
CI_FORMULA = "1.96 * std(ddof=1) / sqrt(n) over per-episode accuracies"


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temp file in the same folder and ``os.replace``."""
    atomic_write_bytes(path, text.encode("utf-8"))


def file_sha256(path: str | Path) -> str:
    """sha256 (hex) of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def eval_key(episode_hash: str, policy: str, checkpoint: str = "best") -> str:
    """The sub-folder name of an evaluation: ``<hash[:16]>-<policy>`` (``-last`` for the last checkpoint)."""
    key = f"{episode_hash[:16]}-{policy}"
    return key if checkpoint == "best" else f"{key}-{checkpoint}"


def write_eval(run_dir: str | Path, result: EvalResult, info: dict[str, Any]) -> Path:
    """Write ``episodes.csv`` and ``summary.json`` of ``result`` under ``<run_dir>/eval/<key>/``.

    Args:
        run_dir: the run directory.
        result: per-episode results.
        info: must hold ``episode_hash`` and ``checkpoint``; may hold ``seed``, ``split``, ``dataset``,
            ``protocol``, ``episode_file``, ``checkpoint_sha256`` (copied into ``summary.json``).

    Returns:
        The evaluation folder. An existing evaluation with the same key (same episodes and policy, but
        another checkpoint digest, e.g. after resumed training) is replaced.
    """
    for field in ("episode_hash", "checkpoint"):
        if field not in info:
            raise ValueError(f"write_eval needs info[{field!r}]; got keys {sorted(info)}")
    folder = Path(run_dir) / EVAL_DIR / eval_key(info["episode_hash"], result.policy, info["checkpoint"])
    frame = pd.DataFrame(
        {
            "position": np.arange(len(result)),
            "index": result.index,
            "acc": result.acc,
            "n_correct": result.n_correct,
            "n_query_total": result.n_query_total,
        }
    )
    summary = result.summary
    data = {
        "mean": summary.mean,
        "ci95": None if np.isnan(summary.ci95) else summary.ci95,
        "std": None if np.isnan(summary.std) else summary.std,
        "n": summary.n,
        "way": result.n_way,
        "shot": result.n_shot,
        "query": result.n_query,
        "policy": result.policy,
        **info,
        "eval_seconds": round(result.seconds, 3),
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "ci_formula": CI_FORMULA,
        "command": command_line(),
    }
    atomic_write_text(folder / "episodes.csv", frame.to_csv(index=False))
    atomic_write_text(folder / "summary.json", json.dumps(data, indent=2, sort_keys=True) + "\n")
    return folder


def read_summary(folder: str | Path) -> dict[str, Any]:
    """The ``summary.json`` of an evaluation folder (DataError if missing or corrupt)."""
    path = Path(folder) / "summary.json"
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DataError(
            f"evaluation summary {str(path)!r} does not exist; run `run_episode.py eval --run RUN`"
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"evaluation summary {str(path)!r} is unreadable ({exc}); it was damaged or edited: delete its folder "
            "and re-run `run_episode.py eval`"
        ) from None
    if not isinstance(data, dict) or "mean" not in data or "episode_hash" not in data:
        raise DataError(
            f"evaluation summary {str(path)!r} lacks 'mean' or 'episode_hash'; delete its folder and re-run eval"
        )
    data["folder"] = str(Path(folder))
    return data


def read_episode_accuracies(folder: str | Path) -> np.ndarray:
    """Per-episode accuracies ``(n,)`` from ``episodes.csv``, in episode-file order (DataError if corrupt).

    Recomputed exactly from the integer columns (``n_correct / n_query_total``), not parsed from ``acc``.
    """
    path = Path(folder) / "episodes.csv"
    try:
        frame = pd.read_csv(path)
    except FileNotFoundError:
        raise DataError(f"per-episode results {str(path)!r} do not exist; re-run `run_episode.py eval`") from None
    missing = [c for c in EPISODE_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"{str(path)!r} lacks columns {missing}; expected {list(EPISODE_COLUMNS)}; re-run eval")
    frame = frame.sort_values("position")
    if not np.array_equal(frame["position"].to_numpy(), np.arange(len(frame))):
        raise DataError(f"{str(path)!r} has missing or repeated positions; delete its folder and re-run eval")
    return frame["n_correct"].to_numpy(dtype=np.float64) / frame["n_query_total"].to_numpy(dtype=np.float64)


def list_evals(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every evaluation summary of a run, sorted by folder name.

    Raises:
        DataError: a folder under ``eval/`` has no readable ``summary.json`` (an evaluation stopped half-way, or
            a damaged or edited file); nothing is skipped silently.
    """
    root = Path(run_dir) / EVAL_DIR
    if not root.is_dir():
        return []
    return [read_summary(folder) for folder in sorted(p for p in root.iterdir() if p.is_dir())]


def find_reusable(
    run_dir: str | Path, episode_hash: str, policy: str, checkpoint: str, checkpoint_sha256: str
) -> Path | None:
    """The evaluation folder with these episodes, policy and checkpoint digest, if it exists and is complete."""
    folder = Path(run_dir) / EVAL_DIR / eval_key(episode_hash, policy, checkpoint)
    if not (folder / "summary.json").exists() or not (folder / "episodes.csv").exists():
        return None
    try:
        summary = read_summary(folder)
    except DataError:
        return None
    same = (
        summary.get("episode_hash") == episode_hash
        and summary.get("policy") == policy
        and summary.get("checkpoint_sha256") == checkpoint_sha256
    )
    return folder if same else None
