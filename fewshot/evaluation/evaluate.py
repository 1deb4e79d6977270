"""Evaluate a learner on a fixed sequence of episodes: per-episode accuracies and their mean ± 95% CI.

The episodes are whatever sequence the caller passes (normally a fixed episode file bound to its split, see
:mod:`episodes.fixed`), so two learners evaluated on the same sequence are compared on identical tasks. The
test-time task size (N-way, K-shot, queries per class) is the episodes' own and need not match training.

Scoring goes through ``learner.predict(episode, policy=...)``, which by contract changes no buffer or parameter
of the model; :func:`evaluate_episodes` checks that contract on every call (a snapshot of the ``state_dict``
before and after) and raises if it was broken, so a broken learner cannot contaminate a reported number.

Normalization statistics policy at test time (``policy``, see docs/ARCHITECTURE.md):

* ``running``: the statistics accumulated during training (eval mode); non-transductive.
* ``support``: statistics of the episode's support set, applied frozen to the queries; non-transductive.
* ``transductive``: statistics of the batch being normalized, queries included; predictions depend on the other
  queries (Bronskill et al., "TaskNorm: Rethinking Batch Normalization for Meta-Learning", ICML 2020,
  arXiv 2003.03284: "meta-learning methods that are transductive must be labeled as such").
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from episodes.episode import Episode
from fewshot.device import model_device
from fewshot.evaluation.stats import MeanCI, mean_ci
from fewshot.norms.policy import Policy
from fewshot.training.distributed import SINGLE, Distributed
from fewshot.training.meta_step_sync import split_evenly

__all__ = ["POLICIES", "EvalResult", "check_policy", "evaluate_episodes", "state_snapshot", "assert_state_unchanged"]

POLICIES = tuple(p.value for p in Policy)
"""Normalization statistics policies accepted at test time (the :class:`fewshot.norms.Policy` names)."""


def check_policy(policy: str) -> str:
    """Return ``policy`` if it is a test-time policy, else raise ValueError listing the valid ones."""
    if policy not in POLICIES:
        raise ValueError(
            f"unknown test-time normalization policy {policy!r}; expected one of {', '.join(POLICIES)} "
            "(running = training statistics, support = support-set statistics, transductive = batch statistics)"
        )
    return policy


@dataclass(frozen=True)
class EvalResult:
    """Per-episode results of :func:`evaluate_episodes`.

    Attributes:
        index: int64 ``(n,)``, each episode's index (``Episode.index``), in evaluation order.
        acc: float64 ``(n,)``, each episode's accuracy ``n_correct / n_query_total`` in [0, 1].
        n_correct: int64 ``(n,)``, correctly classified queries per episode.
        n_query_total: int64 ``(n,)``, queries per episode (``n_way · n_query``).
        n_way: classes per episode.
        n_shot: support images per class.
        n_query: query images per class.
        policy: the normalization policy used.
        seconds: wall time of the evaluation.
    """

    index: np.ndarray
    acc: np.ndarray
    n_correct: np.ndarray
    n_query_total: np.ndarray
    n_way: int
    n_shot: int
    n_query: int
    policy: str
    seconds: float

    @property
    def summary(self) -> MeanCI:
        """Mean of the per-episode accuracies with its 95% CI (see :mod:`fewshot.evaluation.stats`)."""
        return mean_ci(self.acc)

    def __len__(self) -> int:
        return int(self.acc.size)


def state_snapshot(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of every parameter and buffer of ``module`` (its ``state_dict``)."""
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def assert_state_unchanged(module: nn.Module, before: dict[str, torch.Tensor], what: str) -> None:
    """Raise RuntimeError naming the entries of ``module.state_dict()`` that differ from ``before``."""
    after = module.state_dict()
    changed = sorted(
        k for k in set(before) | set(after) if k not in before or k not in after or not torch.equal(before[k], after[k])
    )
    if changed:
        shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
        raise RuntimeError(
            f"{what} changed the model state ({shown}); learner.predict must not modify parameters or buffers. "
            "This is a bug in the learner or a normalization layer (scoring must run under "
            "fewshot.norms.frozen_stats); the numbers of this evaluation are not valid"
        )


def evaluate_episodes(
    learner: nn.Module,
    episodes: Sequence[Episode],
    *,
    policy: str = "running",
    channels_last: bool = False,
    progress: bool = False,
    on_episode: Callable[[int, float], None] | None = None,
    dist: Distributed = SINGLE,
) -> EvalResult:
    """Score ``learner`` on every episode of ``episodes`` and return the per-episode accuracies.

    Args:
        learner: a :class:`fewshot.learners.Learner`; ``learner.predict(episode, policy=policy)`` must return
            logits of shape ``(n_way * n_query, n_way)`` for ``episode.query_x`` of shape
            ``(n_way * n_query, C, H, W)``.
        episodes: a non-empty sequence of episodes of equal sizes (e.g. ``FixedEpisodes.bind(split)``).
        policy: test-time normalization policy, one of :data:`POLICIES`.
        channels_last: convert the model to the channels-last memory format first (faster convolutions on
            CPU; values are unchanged).
        progress: show a tqdm progress bar on stderr.
        on_episode: called as ``on_episode(position, accuracy)`` after each episode (this rank's episodes).
        dist: several ranks (``torchrun``): each scores its contiguous share of the episodes and the per-episode
            counts are summed over the ranks (integers: the result equals one process's exactly).

    Returns:
        An :class:`EvalResult`; ``result.summary`` gives mean ± 95% CI.

    Raises:
        ValueError: unknown ``policy``, no episodes, episodes of unequal sizes, or logits of the wrong shape.
        RuntimeError: the learner changed its parameters or buffers while scoring.
    """
    check_policy(policy)
    n = len(episodes)
    if n == 0:
        raise ValueError("no episodes to evaluate; pass a non-empty episode set (e.g. --episodes 600)")
    if channels_last:
        learner.to(memory_format=torch.channels_last)
    before = state_snapshot(learner)
    device = model_device(learner)
    index = np.zeros(n, dtype=np.int64)
    n_correct = np.zeros(n, dtype=np.int64)
    n_total = np.zeros(n, dtype=np.int64)
    sizes: tuple[int, int, int] | None = (episodes[0].n_way, episodes[0].n_shot, episodes[0].n_query)
    positions = split_evenly(n, dist)
    if progress and dist.is_main:
        from tqdm import tqdm

        positions = tqdm(positions, desc=f"eval ({policy})", unit="episode", leave=False)
    start = time.perf_counter()
    with torch.no_grad():  # torch.func transforms (MAML's inner loop) ignore an outer no_grad
        for pos in positions:
            episode = episodes[pos].to(device)
            ep_sizes = (episode.n_way, episode.n_shot, episode.n_query)
            if sizes is None:
                sizes = ep_sizes
            elif ep_sizes != sizes:
                raise ValueError(
                    f"episodes must all have the same size; episode at position 0 is {sizes[0]}-way "
                    f"{sizes[1]}-shot {sizes[2]}-query, position {pos} is {ep_sizes[0]}-way {ep_sizes[1]}-shot "
                    f"{ep_sizes[2]}-query; evaluate one episode file at a time"
                )
            logits = learner.predict(episode, policy=policy)
            expected = (episode.query_y.shape[0], episode.n_way)
            if tuple(logits.shape) != expected:
                raise ValueError(
                    f"learner.predict returned logits of shape {tuple(logits.shape)}, expected {expected} "
                    "(n_way * n_query, n_way); the learner does not follow the Learner contract"
                )
            correct = int((logits.argmax(dim=1) == episode.query_y).sum())
            index[pos], n_correct[pos], n_total[pos] = episode.index, correct, episode.query_y.shape[0]
            if on_episode is not None:
                on_episode(pos, correct / n_total[pos])
    seconds = time.perf_counter() - start
    assert_state_unchanged(learner, before, f"evaluation with policy {policy!r}")
    if dist.active:  # every rank filled its own positions: the sum over ranks is the whole table
        table = torch.from_numpy(np.stack([index, n_correct, n_total])).to(dist.device)
        index, n_correct, n_total = dist.all_reduce_sum_(table, "all-reduce of the evaluation counts").cpu().numpy()
    assert sizes is not None
    return EvalResult(
        index=index,
        acc=n_correct / n_total,
        n_correct=n_correct,
        n_query_total=n_total,
        n_way=sizes[0],
        n_shot=sizes[1],
        n_query=sizes[2],
        policy=policy,
        seconds=seconds,
    )
