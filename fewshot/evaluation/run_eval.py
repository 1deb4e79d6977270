"""Evaluate a run directory on its fixed test episodes, reusing an earlier evaluation when nothing changed.

The episodes come from the content-addressed episode sets shared by every run
(:mod:`fewshot.training.episode_sets`): test split of the run's config, ``eval.seed``, and the run's
``eval`` way/shot/query/episodes unless overridden. Results go to ``<run>/eval/<key>/`` (see
:mod:`fewshot.evaluation.outputs`). An existing evaluation is reused, without loading the model, when its
episode-set content hash, policy and checkpoint digest (sha256 of the checkpoint file) all match. Either way the
checkpoint's own SHA-256 and its config are checked against ``config.yaml`` first
(:func:`fewshot.training.run_dir.read_verified_checkpoint`), and the ``eval/`` folder is checked for writability
before any episode is scored.

Under ``torchrun`` (``dist``) the ranks score contiguous shares of the episodes and sum the per-episode counts;
rank 0 alone makes the episode file, decides on reuse, writes ``eval/`` and runs the leak check.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fewshot.errors import ConfigError, DataError
from fewshot.evaluation.evaluate import check_policy, evaluate_episodes
from fewshot.evaluation.leak import LeakReport, check_leak
from fewshot.evaluation.outputs import file_sha256, find_reusable, read_episode_accuracies, read_summary, write_eval
from fewshot.training.distributed import SINGLE, Distributed

__all__ = [
    "CHECKPOINTS", "EvalRequest", "RunEvaluation", "resolve_request", "checkpoint_file", "load_run_config",
    "evaluate_run",
]  # fmt: skip

CHECKPOINTS = ("best", "last")


@dataclass(frozen=True)
class EvalRequest:
    """The test-time setting of an evaluation, resolved from a run's config and the overrides.

    Attributes:
        n_way, n_shot, n_query: episode sizes.
        episodes: number of fixed episodes.
        seed: seed of the fixed episode file (``eval.seed``).
        within_alphabet: draw each episode's classes from one alphabet.
        policy: test-time normalization policy.
    """

    n_way: int
    n_shot: int
    n_query: int
    episodes: int
    seed: int
    within_alphabet: bool
    policy: str


@dataclass(frozen=True)
class RunEvaluation:
    """An evaluation of one run.

    Attributes:
        run_dir: the run directory.
        folder: ``<run>/eval/<key>/`` holding ``episodes.csv`` and ``summary.json``.
        summary: the content of ``summary.json`` (accuracies as fractions).
        acc: float64 ``(n,)``, per-episode accuracies in episode-file order.
        reused: whether an earlier evaluation was reused (nothing was recomputed).
        leak: the leak check, when requested.
    """

    run_dir: Path
    folder: Path
    summary: dict[str, Any]
    acc: np.ndarray
    reused: bool
    leak: LeakReport | None = None


def _positive(name: str, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ConfigError(f"{name} must be a positive integer, got {value!r}")


def resolve_request(
    cfg: Any,
    *,
    n_way: int | None = None,
    n_shot: int | None = None,
    n_query: int | None = None,
    episodes: int | None = None,
    policy: str | None = None,
) -> EvalRequest:
    """The run's ``eval`` section with any of the given overrides applied (``None`` keeps the config's)."""
    for name, value in (("n_way", n_way), ("n_shot", n_shot), ("n_query", n_query), ("episodes", episodes)):
        _positive(name, value)
    if n_way == 1:
        raise ConfigError("n_way must be >= 2 at evaluation too (a 1-way episode has nothing to classify), got 1")
    e = cfg.eval
    request = EvalRequest(
        n_way=e.n_way if n_way is None else n_way,
        n_shot=e.n_shot if n_shot is None else n_shot,
        n_query=e.n_query if n_query is None else n_query,
        episodes=e.episodes if episodes is None else episodes,
        seed=e.seed,
        within_alphabet=e.within_alphabet,
        policy=e.norm_policy if policy is None else policy,
    )
    try:
        check_policy(request.policy)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    return request


def checkpoint_file(run_dir: str | Path, checkpoint: str = "best") -> Path:
    """The checkpoint file ``load_run`` uses: ``checkpoints/best.pt``, falling back to ``last.pt``."""
    if checkpoint not in CHECKPOINTS:
        raise ConfigError(f"checkpoint must be one of {', '.join(CHECKPOINTS)}, got {checkpoint!r}")
    folder = Path(run_dir) / "checkpoints"
    for name in (checkpoint, "last") if checkpoint == "best" else (checkpoint,):
        if (folder / f"{name}.pt").is_file():
            return folder / f"{name}.pt"
    raise DataError(
        f"run {str(run_dir)!r} has no checkpoint ({folder}/{checkpoint}.pt missing); train it first with "
        "`run_episode.py train` or resume it with `run_episode.py train --resume RUN`"
    )


def load_run_config(run_dir: str | Path) -> Any:
    """The resolved :class:`~fewshot.config.schema.ExperimentConfig` of a run directory."""
    from fewshot.config.loader import read_config

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise DataError(
            f"{str(run_dir)!r} is not a run directory: it has no config.yaml; pass a folder written by "
            "`run_episode.py train`"
        )
    return read_config(path)


@contextlib.contextmanager
def _threads(n: int | None) -> Iterator[None]:
    """torch intra-op threads set to ``n`` (``None``: all cores) inside the block, as in training."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n or os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def evaluate_run(
    run_dir: str | Path,
    *,
    n_way: int | None = None,
    n_shot: int | None = None,
    n_query: int | None = None,
    episodes: int | None = None,
    policy: str | None = None,
    checkpoint: str = "best",
    reuse: bool = True,
    leak_episodes: int | None = None,
    progress: bool = False,
    runs_root: str | Path | None = None,
    dist: Distributed = SINGLE,
) -> RunEvaluation:
    """Evaluate a run on its fixed test episodes (or reuse a matching earlier evaluation).

    Args:
        run_dir: a directory written by ``run_episode.py train``.
        n_way, n_shot, n_query, episodes, policy: override the run's ``eval`` settings.
        checkpoint: ``best`` (falls back to ``last`` when absent) or ``last``.
        reuse: reuse a matching evaluation instead of recomputing it.
        leak_episodes: also run the leak check on this many episodes (``None``: no leak check).
        progress: show a progress bar.
        runs_root: where ``_episode_sets/`` lives (default ``$FEWSHOT_RUNS`` or ``./runs``).
        dist: this process's rank (module docstring); every rank returns the same evaluation (rank 0's leak check).

    Returns:
        A :class:`RunEvaluation`.

    Raises:
        ConfigError: bad overrides or policy. DataError: not a run directory, no checkpoint, missing data, a
            damaged checkpoint or a ``config.yaml`` edited after training. StorageError: ``eval/`` is not writable.
    """
    from fewshot.training.build import build_split
    from fewshot.training.episode_sets import get_episode_set
    from fewshot.training.run_dir import check_writable, read_verified_checkpoint

    run_dir = Path(run_dir)
    load_run_config(run_dir)  # the clear "not a run directory" error first
    ckpt = checkpoint_file(run_dir, checkpoint)
    cfg, _ = read_verified_checkpoint(run_dir, ckpt.stem)
    request = resolve_request(cfg, n_way=n_way, n_shot=n_shot, n_query=n_query, episodes=episodes, policy=policy)
    split = build_split(cfg, cfg.data.test_split)

    def episode_set() -> Any:
        return get_episode_set(
            split, request.n_way, request.n_shot, request.n_query, seed=request.seed, count=request.episodes,
            within_alphabet=request.within_alphabet, root=runs_root,
        )  # fmt: skip

    eset = episode_set() if dist.is_main else None  # rank 0 writes the shared file, then the others read it
    dist.barrier("barrier after rank 0 made the test episode set")
    eset = eset or episode_set()
    ckpt_sha = file_sha256(ckpt)
    episode_hash = eset.content_hash
    folder = None
    if dist.is_main and reuse:
        folder = find_reusable(run_dir, episode_hash, request.policy, checkpoint, ckpt_sha)
    folder = dist.broadcast_object(folder, "broadcast of the reuse decision")
    reused = folder is not None
    learner = None
    with _threads(cfg.train.threads):
        if folder is None:
            if dist.is_main:
                check_writable(run_dir / "eval", "evaluation results")  # before scoring, not after
            learner = _load_learner(run_dir, checkpoint, request.n_way)
            if dist.device.type != "cpu":
                learner.to(dist.device)
            result = evaluate_episodes(
                learner, eset.episodes, policy=request.policy, channels_last=cfg.train.channels_last,
                progress=progress, dist=dist,
            )  # fmt: skip
            info = {
                "dataset": split.dataset,
                "protocol": split.protocol,
                "split": split.split,
                "seed": request.seed,
                "within_alphabet": request.within_alphabet,
                "episode_file": str(eset.path),
                "episode_hash": episode_hash,
                "checkpoint": checkpoint,
                "checkpoint_file": str(ckpt.relative_to(run_dir)),
                "checkpoint_sha256": ckpt_sha,
            }
            folder = write_eval(run_dir, result, info) if dist.is_main else None
        leak = None
        if leak_episodes is not None and dist.is_main:
            learner = learner if learner is not None else _load_learner(run_dir, checkpoint, request.n_way)
            leak = check_leak(learner, eset.episodes, policy=request.policy, n_episodes=leak_episodes)
    if dist.active:  # rank 0's files, read there (the other ranks need no shared disk)
        folder, summary, acc, leak = dist.broadcast_object(
            (folder, read_summary(folder), read_episode_accuracies(folder), leak) if dist.is_main else None,
            "broadcast of the evaluation's results",
        )
        return RunEvaluation(run_dir=run_dir, folder=folder, summary=summary, acc=acc, reused=reused, leak=leak)
    summary = read_summary(folder)
    acc = read_episode_accuracies(folder)
    return RunEvaluation(run_dir=run_dir, folder=folder, summary=summary, acc=acc, reused=reused, leak=leak)


def _load_learner(run_dir: Path, checkpoint: str, n_way: int) -> Any:
    from fewshot.training.run_dir import load_run

    learner = load_run(run_dir, checkpoint=checkpoint).learner
    built = getattr(learner, "n_way", None)  # learners with an n_way-sized head (MAML) cannot change way
    if built is not None and built != n_way:
        raise ConfigError(
            f"the learner of run {str(run_dir)!r} ({type(learner).__name__}) has a {built}-way output head "
            f"(train.n_way = {built}) and cannot score {n_way}-way episodes; evaluate with --n-way {built}, or "
            f"train a run with train.n_way={n_way}"
        )
    return learner
