"""Run directories: creation (never over a user's files), ``env.json``, the resume config check, and ``load_run``.

Layout of a run (``runs/<name>/<UTC time>-<git short sha>/`` unless ``--out`` is given)::

    config.yaml            the resolved config (rewritten on resume with the resumable keys that changed)
    env.json               torch/python/platform/threads/git/malloc tunables of the first session + resumes
    train_log.csv          episode, loss, acc, lr, elapsed_s, val_acc
    metrics.json           status, episodes_done, best_val_acc, best_episode, timings (written atomically)
    checkpoints/last.pt    full training state (atomic, SHA-256 verified), for resume
    checkpoints/best.pt    weights of the best validation episode (or of the final model without validation)
    eval/<set hash>/       evaluation outputs (written by the eval command)
    .lock                  held (``flock``) by the process training the run; holds its pid

Every checkpoint carries the resolved config it was trained with. :func:`read_verified_checkpoint` (used by
``eval``, ``--resume``, ``compare``, ``table`` and :func:`load_run`) checks the checkpoint's SHA-256 and that
``config.yaml`` still says what the checkpoint was trained with; a hand edit is refused with the keys named.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from episodes.cache import atomic_write_bytes
from fewshot.config.loader import (
    apply_overrides,
    config_from_dict,
    config_to_dict,
    diff_configs,
    load_config,
    read_config,
    with_added_keys,
    with_current_names,
)
from fewshot.config.schema import ExperimentConfig
from fewshot.errors import ConfigError, DataError, StorageError
from fewshot.provenance import command_line
from fewshot.training.checkpoint import load_checkpoint
from fewshot.training.episode_sets import runs_root
from fewshot.training.file_lock import LockOwner, hold_lock, lock_owner

__all__ = [
    "RESUMABLE_KEYS",
    "LoadedRun",
    "git_info",
    "default_run_dir",
    "prepare_run_dir",
    "find_latest_run",
    "resume_config",
    "check_resume_changes",
    "never_checkpointed",
    "check_writable",
    "run_lock",
    "lock_held",
    "read_verified_checkpoint",
    "verify_run",
    "write_json",
    "read_json",
    "write_env",
    "load_run",
]

#: Config keys a resumed run may change (they do not alter what an episode computes); ``train.episodes`` may
#: only grow. The checkpoint's config and ``config.yaml`` may differ in these keys only.
RESUMABLE_KEYS = (
    "device",
    "train.episodes",
    "train.max_minutes",
    "train.checkpoint_minutes",
    "train.threads",
    "train.log_every",
    "data.data_root",
)
_REPO = Path(__file__).resolve().parent.parent.parent


def git_info(repo: str | Path | None = None) -> dict[str, Any]:
    """``{"commit", "short", "dirty"}`` of the checkout (``None`` values outside git)."""
    repo = Path(repo) if repo is not None else _REPO

    def git(*args: str) -> str | None:
        try:
            out = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, timeout=10, check=True)
        except (OSError, subprocess.SubprocessError):
            return None
        return out.stdout.strip()

    commit = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if commit else None
    return {"commit": commit, "short": commit[:7] if commit else None, "dirty": bool(status) if commit else None}


def default_run_dir(cfg: ExperimentConfig, root: str | Path | None = None) -> Path:
    """``<runs root>/<name>/<UTC YYYYmmddTHHMMSSZ>-<git short sha>`` (``-2``, ``-3``... if taken)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    base = runs_root(root) / cfg.name / f"{stamp}-{git_info()['short'] or 'nogit'}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def prepare_run_dir(path: str | Path, *, resume: bool, create: bool = True) -> Path:
    """Check the run directory (new run: absent or empty; resume: holds a run) and create it for a new run.

    ``create=False`` only checks: the trainer checks before loading data and building the model, and creates
    the directory afterwards, so a run that fails to start leaves nothing behind. A run that was stopped before
    its first checkpoint (:func:`never_checkpointed`) may be started again in place as a new run.

    Raises:
        ConfigError: a new run in an existing non-empty directory (nothing a user saved is overwritten), or
            ``resume`` on a directory without ``config.yaml`` and ``checkpoints/last.pt``.
    """
    path = Path(path)
    if resume:
        missing = [p for p in ("config.yaml", "checkpoints/last.pt") if not (path / p).is_file()]
        if missing:
            raise ConfigError(
                f"cannot resume {str(path)!r}: it has no {' and no '.join(missing)}; give the directory of a run "
                "started by `run_episode.py train` (or drop --resume to start a new run)"
            )
        return path
    if path.exists() and (not path.is_dir() or any(path.iterdir())) and not never_checkpointed(path):
        raise ConfigError(
            f"refusing to start a new run in {str(path)!r}: it exists and is not empty; pass --resume to continue "
            "the run saved there, or choose another --out"
        )
    if create:
        (path / "checkpoints").mkdir(parents=True, exist_ok=True)
    return path


_RUN_FILES = frozenset({"config.yaml", "env.json", "metrics.json", "train_log.csv", "checkpoints", ".lock"})


def never_checkpointed(path: str | Path) -> bool:
    """Whether ``path`` holds a run stopped before its first checkpoint (nothing in it is worth keeping).

    True when it holds ``config.yaml`` and nothing but the files the trainer writes at start (``env.json``,
    ``metrics.json``, ``train_log.csv``, the lock and an ``checkpoints/`` folder without any ``.pt`` file).
    """
    path = Path(path)
    if not (path / "config.yaml").is_file() or any(p.name not in _RUN_FILES for p in path.iterdir()):
        return False
    folder = path / "checkpoints"
    return not folder.exists() or (folder.is_dir() and not any(folder.glob("*.pt")))


def check_writable(folder: str | Path, what: str) -> None:
    """Write and remove a probe file in ``folder`` (creating it, and removing again the folders created).

    Called before work whose result would be lost otherwise (training, scoring evaluation episodes).

    Raises:
        StorageError: the folder cannot be created or written (read-only, permissions, quota, disk full).
    """
    folder = Path(folder)
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        for p in reversed(created):
            p.mkdir()
        fd, probe = tempfile.mkstemp(dir=folder, prefix=".write-test-")
        try:
            os.write(fd, b"fewshot")
            os.fsync(fd)
        finally:
            os.close(fd)
            os.unlink(probe)
    except OSError as exc:
        raise StorageError(
            f"cannot write {what} to {str(folder)!r} ({exc.strerror or exc}); nothing was started: make the folder "
            "writable, free some space, or choose another location"
        ) from None
    finally:
        for p in created:
            with contextlib.suppress(OSError):
                p.rmdir()


@contextlib.contextmanager
def run_lock(run_dir: str | Path) -> Iterator[Path]:
    """Hold ``<run_dir>/.lock`` (:func:`~fewshot.training.file_lock.hold_lock`) inside the block.

    Raises:
        ConfigError: another live process holds the lock (the message gives its pid and host).
    """
    path = Path(run_dir) / ".lock"

    def busy(owner: LockOwner) -> str:
        return (
            f"run {str(run_dir)!r} is being trained by another process ({owner}, lock {str(path)!r}); two "
            "processes must not write one run: wait for it to finish or stop it (Ctrl-C or `kill -TERM "
            f"{owner.pid}` on {owner.host}), then resume"
        )

    with hold_lock(path, busy) as held:
        yield held


def lock_held(run_dir: str | Path) -> bool:
    """Whether a live process holds the run's lock (i.e. is training it now); never takes the lock."""
    return lock_owner(Path(run_dir) / ".lock") is not None


def find_latest_run(name: str, root: str | Path | None = None) -> Path:
    """The most recent run directory of experiment ``name`` that has a ``last.pt`` (for ``--resume``)."""
    parent = runs_root(root) / name
    runs = sorted(p for p in parent.glob("*") if (p / "checkpoints" / "last.pt").is_file()) if parent.is_dir() else []
    if not runs:
        raise ConfigError(
            f"--resume found no run of experiment {name!r} under {str(parent)!r}; give its directory: --resume RUN_DIR"
        )
    return runs[-1]


def resume_config(
    run_dir: str | Path, config_path: str | Path | None = None, overrides: Sequence[str] = ()
) -> ExperimentConfig:
    """The config to resume ``run_dir`` with: its ``config.yaml``, checked against ``config_path`` + overrides.

    Without ``config_path`` the overrides apply to the saved config. See :func:`check_resume_changes`.

    Raises:
        ConfigError: a change that would alter what was trained; the message lists each key, saved vs given.
    """
    saved_path = Path(run_dir) / "config.yaml"
    saved = read_config(saved_path)
    if config_path is not None:
        new = load_config(config_path, overrides)
    else:
        new = config_from_dict(apply_overrides(config_to_dict(saved), overrides))
    check_resume_changes(config_to_dict(saved), config_to_dict(new), run_dir)
    return new


def check_resume_changes(run: Mapping[str, Any], new: Mapping[str, Any], run_dir: str | Path) -> dict[str, list[Any]]:
    """The changes a resume makes to the run's config, after refusing those that would alter what was trained.

    Only :data:`RESUMABLE_KEYS` may change, and ``train.episodes`` only upwards (a longer budget).

    Args:
        run: the run's config as a dict (its checkpoint's or its ``config.yaml``).
        new: the config to resume with, as a dict.
        run_dir: the run directory (for messages).

    Returns:
        ``{dotted key: [run's value, new value]}`` of the allowed changes (recorded in ``env.json``).

    Raises:
        ConfigError: naming every refused key with the run's value and the new one.
    """
    diffs = diff_configs(with_added_keys(run), new)
    refused = [d for d in diffs if d[0] not in RESUMABLE_KEYS]
    old_episodes, new_episodes = _get(run, "train.episodes"), _get(new, "train.episodes")
    if isinstance(old_episodes, int) and isinstance(new_episodes, int) and new_episodes < old_episodes:
        refused.append(("train.episodes", old_episodes, new_episodes))
    if refused:
        listed = "; ".join(f"{k}: run has {a!r}, given {b!r}" for k, a, b in refused)
        raise ConfigError(
            f"cannot resume {str(run_dir)!r} with a different config ({listed}): that would change what was trained. "
            "Resume with the run's own config (omit --config, or pass the same file and overrides), or start a new "
            f"run. On resume only {', '.join(RESUMABLE_KEYS)} may change, and train.episodes only upwards"
        )
    return {k: [a, b] for k, a, b in diffs}


def _get(tree: Mapping[str, Any], dotted: str) -> Any:
    value: Any = tree
    for part in dotted.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def read_verified_checkpoint(run_dir: str | Path, name: str) -> tuple[ExperimentConfig, dict[str, Any]]:
    """``config.yaml`` and ``checkpoints/<name>.pt`` of a run, after checking that they belong together.

    The checkpoint's SHA-256 is checked (:func:`~fewshot.training.checkpoint.load_checkpoint`) and the config it
    was trained with is compared with ``config.yaml``; they may differ only in :data:`RESUMABLE_KEYS` (a resumed
    run's longer budget).

    Raises:
        DataError: the checkpoint is missing, damaged or edited, or ``config.yaml`` differs from it (every
            differing key is named with both values, and what to do).
        ConfigError: ``config.yaml`` is unreadable or invalid.
    """
    run_dir = Path(run_dir)
    cfg = read_config(run_dir / "config.yaml")
    path = run_dir / "checkpoints" / f"{name}.pt"
    payload = load_checkpoint(path)
    trained = payload.get("config")
    if not isinstance(trained, Mapping):
        raise DataError(f"checkpoint {str(path)!r} carries no config; it was not written by `run_episode.py train`")
    diffs = [
        d
        for d in diff_configs(with_current_names(with_added_keys(trained)), config_to_dict(cfg))
        if d[0] not in RESUMABLE_KEYS
    ]
    if diffs:
        listed = "; ".join(f"{k}: trained with {a!r}, config.yaml says {b!r}" for k, a, b in diffs)
        raise DataError(
            f"{str(run_dir / 'config.yaml')!r} does not match the config {name}.pt was trained with ({listed}); "
            "config.yaml was edited after training, so the run's record is wrong. Restore those values in "
            "config.yaml; to try other settings, start a new run (`run_episode.py train --set KEY=VALUE`) or pass "
            "evaluation options on the command line (`eval --n-shot ...`)"
        )
    return cfg, payload


def verify_run(run_dir: str | Path) -> ExperimentConfig:
    """The run's config after :func:`read_verified_checkpoint` of each checkpoint it has (none: config only)."""
    run_dir = Path(run_dir)
    cfg = read_config(run_dir / "config.yaml")
    for name in ("last", "best"):
        if (run_dir / "checkpoints" / f"{name}.pt").is_file():
            cfg, _ = read_verified_checkpoint(run_dir, name)
    return cfg


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically (temp file + ``os.replace``)."""
    path = Path(path)
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode("utf-8"))
    return path


def read_json(path: str | Path) -> dict[str, Any]:
    """Read a JSON object; ``{}`` if the file does not exist."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise DataError(f"{str(path)!r} is not valid JSON ({exc}); it was edited or damaged") from None


def _environment(device: torch.device | None = None) -> dict[str, Any]:
    from fewshot.device import device_facts

    git = git_info()
    return {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "cpu_count": os.cpu_count(),
        **device_facts(device if device is not None else torch.device("cpu")),
        "dtype": str(torch.get_default_dtype()).replace("torch.", ""),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "git_commit": git["commit"],
        "git_dirty": git["dirty"],
        "glibc_tunables": os.environ.get("GLIBC_TUNABLES"),
        "command": command_line(),
    }


def write_env(
    run_dir: str | Path,
    *,
    resumed: bool = False,
    config_changes: Mapping[str, Any] | None = None,
    device: torch.device | None = None,
    numerics: Mapping[str, Any] | None = None,
    distributed: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``env.json`` (first session) or append this session to its ``resumes`` list.

    ``config_changes`` (``{key: [old, new]}``, from :func:`check_resume_changes`) is recorded in the session's
    entry, so the record says which budget each session ran with. ``distributed`` (``{"world_size", "backend"}``,
    default one process: ``{"world_size": 1, "backend": None}``) says how many ranks the session ran on.
    ``device`` (default the CPU) adds its facts (:func:`fewshot.device.device_facts`: device, GPU model, CUDA,
    cuDNN and driver versions); ``numerics`` (precision, TF32 switches, deterministic) is recorded as given.
    """
    path = Path(run_dir) / "env.json"
    env = _environment(device)
    if numerics is not None:
        env["numerics"] = dict(numerics)
    env.update(distributed or {"world_size": 1, "backend": None})
    if resumed:
        env["config_changes"] = dict(config_changes or {})
    if resumed and path.is_file():
        first = read_json(path)
        first.setdefault("resumes", []).append(env)
        env = first
    write_json(path, env)
    return env


@dataclass
class LoadedRun:
    """A trained learner rebuilt from its run directory.

    Attributes:
        cfg: the run's config.
        learner: the learner with the checkpoint's weights (``nn.Module``; channels-last if configured).
        run_dir: the run directory.
        metrics: the run's ``metrics.json`` (``{}`` if absent).
        checkpoint: path of the checkpoint loaded.
        episode: training episodes done when the checkpoint was written.
        image_shape: ``(C, H, W)`` the model was trained on.
    """

    cfg: ExperimentConfig
    learner: Any
    run_dir: Path
    metrics: dict[str, Any]
    checkpoint: Path
    episode: int
    image_shape: tuple[int, int, int]


def load_run(run_dir: str | Path, checkpoint: str = "best", device: str | torch.device | None = None) -> LoadedRun:
    """Rebuild the learner of a run from ``config.yaml`` and load ``checkpoints/<checkpoint>.pt``.

    Args:
        run_dir: a run directory written by ``run_episode.py train``.
        checkpoint: ``"best"`` (falls back to ``last`` with a warning if there is no best checkpoint yet) or
            ``"last"``.
        device: where the learner is put (``auto | cpu | cuda | cuda:N``); ``None``: the command line's
            ``--device``, else ``auto`` (:func:`fewshot.device.run_device`). The checkpoint is read onto the CPU
            (``map_location``) first, so a run trained on a GPU loads on a CPU and the other way round.

    Raises:
        ValueError: ``checkpoint`` is neither ``"best"`` nor ``"last"``.
        DataError: no config or no checkpoint in ``run_dir``, a damaged or edited checkpoint, or a
            ``config.yaml`` that differs from the checkpoint's config (see :func:`read_verified_checkpoint`).
    """
    from fewshot.training.build import build_learner

    if checkpoint not in ("best", "last"):
        raise ValueError(f"checkpoint must be 'best' or 'last', got {checkpoint!r}")
    run_dir = Path(run_dir)
    path = run_dir / "checkpoints" / f"{checkpoint}.pt"
    if checkpoint == "best" and not path.is_file():
        path = run_dir / "checkpoints" / "last.pt"
        if path.is_file():
            warnings.warn(
                f"run {str(run_dir)!r} has no best.pt (no validation finished yet); using last.pt", stacklevel=2
            )
    cfg, payload = read_verified_checkpoint(run_dir, path.stem)
    shape = tuple(int(v) for v in payload["image_shape"])
    with torch.random.fork_rng(devices=[]):  # building initializes parameters: leave the caller's RNG alone
        learner = build_learner(cfg, cfg.train.n_way, shape)
    learner.load_state_dict(payload["model"])
    from fewshot.device import resolve_device, run_device

    learner.to(run_device("auto") if device is None else resolve_device(device))
    return LoadedRun(
        cfg=cfg,
        learner=learner,
        run_dir=run_dir,
        metrics=read_json(run_dir / "metrics.json"),
        checkpoint=path,
        episode=int(payload["episode"]),
        image_shape=shape,  # type: ignore[arg-type]
    )
