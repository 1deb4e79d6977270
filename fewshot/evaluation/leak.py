"""The leak check: does a query's prediction depend on the other queries of its episode?

A non-transductive learner classifies each query from the support set and that query alone,
``p(y*_i | x*_i, D)``; a transductive one also looks at the other queries, ``p(y*_i | x*_i, x*_{j≠i}, D)``,
typically through batch-normalization statistics computed over the query batch (Bronskill, Gordon, Requeima,
Nowozin and Turner, "TaskNorm: Rethinking Batch Normalization for Meta-Learning", ICML 2020, arXiv 2003.03284,
§3.2). Their certificate, used here: score the query set whole, then one example at a time, and compare. For a
non-transductive learner the two agree up to float rounding; with MAML and transductive BN, accuracy on
Omniglot 5-way 1-shot falls from 98.4% to 21.6% when queries are scored one at a time (their Table 1).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from episodes.episode import Episode
from fewshot.evaluation.evaluate import assert_state_unchanged, check_policy, state_snapshot

__all__ = ["LeakReport", "check_leak", "single_query_episode"]

_REL_TOL = 1e-4  # |Δlogit| <= 1e-4 · max(1, max |logit|) counts as float rounding (batch-size-dependent kernels)


@dataclass(frozen=True)
class LeakReport:
    """Result of :func:`check_leak`.

    Attributes:
        policy: the normalization policy checked.
        n_episodes: episodes checked (the first ``n_episodes`` of the set).
        n_queries: query examples checked in total.
        max_abs_logit_diff: largest ``|logit_whole − logit_single|`` over every query and class (``None`` when a
            single query could not be scored at all).
        tolerance: the largest difference attributed to float rounding.
        acc_whole: mean per-episode accuracy with the query set scored whole.
        acc_single: mean per-episode accuracy with queries scored one at a time (``None`` if impossible).
        acc_diff: ``acc_whole − acc_single`` (``None`` if impossible).
        changed_predictions: queries whose predicted class differs between the two ways of scoring.
        single_query_error: why a query alone could not be scored (e.g. a norm layer needs batch statistics of
            at least two samples), else ``None``. A learner that cannot score a query alone is transductive.
    """

    policy: str
    n_episodes: int
    n_queries: int
    max_abs_logit_diff: float | None
    tolerance: float
    acc_whole: float
    acc_single: float | None
    acc_diff: float | None
    changed_predictions: int
    single_query_error: str | None = None

    @property
    def transductive(self) -> bool:
        """Whether predictions depend on the other queries (differences beyond float rounding, or no prediction
        at all for a query alone)."""
        return self.max_abs_logit_diff is None or self.max_abs_logit_diff > self.tolerance

    @property
    def verdict(self) -> str:
        """One sentence in plain words."""
        label = "label results with this policy as transductive"
        if self.max_abs_logit_diff is None:
            return (
                f"transductive: predictions depend on other queries (policy {self.policy!r}: a query cannot even be "
                f"scored on its own: {self.single_query_error}); {label}"
            )
        if self.transductive:
            return (
                f"transductive: predictions depend on other queries (policy {self.policy!r}: scoring one query at a "
                f"time changes {self.changed_predictions} of {self.n_queries} predictions; accuracy whole minus one "
                f"at a time = {100 * (self.acc_diff or 0.0):+.2f} points); {label}"
            )
        same = (
            "the logits are identical bit for bit"
            if self.max_abs_logit_diff == 0.0
            else f"the logits differ by at most {self.max_abs_logit_diff:.2g}, float rounding"
        )
        return (
            f"non-transductive: each prediction depends only on the support set and its own query (policy "
            f"{self.policy!r}: {same})"
        )

    def to_dict(self) -> dict[str, object]:
        return {**dataclasses.asdict(self), "transductive": self.transductive, "verdict": self.verdict}


def single_query_episode(episode: Episode, i: int) -> Episode:
    """``episode`` with its query set reduced to query ``i`` (``query_x`` of shape ``(1, C, H, W)``)."""
    return dataclasses.replace(
        episode,
        query_x=episode.query_x[i : i + 1],
        query_y=episode.query_y[i : i + 1],
        query_ids=episode.query_ids[i : i + 1],
    )


def check_leak(
    learner: nn.Module,
    episodes: Sequence[Episode],
    *,
    policy: str = "running",
    n_episodes: int = 50,
) -> LeakReport:
    """Score the first ``n_episodes`` episodes' queries whole and one at a time; report the differences.

    Args:
        learner: a :class:`fewshot.learners.Learner` (``predict(episode, policy=...)`` returns logits of shape
            ``(len(episode.query_y), n_way)``).
        episodes: the episode set (its first ``min(n_episodes, len(episodes))`` episodes are used).
        policy: the test-time normalization policy to check.
        n_episodes: episodes to check; each costs ``n_way · n_query + 1`` calls of ``predict``.

    Returns:
        A :class:`LeakReport`: ``max_abs_logit_diff`` is 0 up to float rounding for the ``running`` and
        ``support`` policies and clearly non-zero for ``transductive`` with batch-statistics layers.

    Raises:
        ValueError: unknown policy or ``n_episodes < 1``.
        RuntimeError: the learner changed its parameters or buffers while scoring.
    """
    check_policy(policy)
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1 for the leak check, got {n_episodes}")
    count = min(n_episodes, len(episodes))
    if count == 0:
        raise ValueError("no episodes to check; pass a non-empty episode set")
    before = state_snapshot(learner)
    max_diff, max_logit = 0.0, 0.0
    acc_whole, acc_single, changed, n_queries = 0.0, 0.0, 0, 0
    error: str | None = None
    with torch.no_grad():
        for pos in range(count):
            episode = episodes[pos]
            whole = learner.predict(episode, policy=policy)
            n_q = episode.query_y.shape[0]
            try:
                single = torch.cat(
                    [learner.predict(single_query_episode(episode, i), policy=policy) for i in range(n_q)]
                )
            except ValueError as exc:
                if policy != "transductive":  # non-transductive policies must score a query alone: a real error
                    raise
                error, count = str(exc).split(";")[0], pos + 1
                acc_whole += float((whole.argmax(1) == episode.query_y).double().mean())
                n_queries += n_q
                break
            if single.shape != whole.shape:
                raise ValueError(
                    f"learner.predict returned {tuple(single.shape)} logits one query at a time but "
                    f"{tuple(whole.shape)} for the whole query set; the learner does not follow the Learner contract"
                )
            max_diff = max(max_diff, float((whole - single).abs().max()))
            max_logit = max(max_logit, float(whole.abs().max()))
            pred_whole, pred_single = whole.argmax(1), single.argmax(1)
            acc_whole += float((pred_whole == episode.query_y).double().mean())
            acc_single += float((pred_single == episode.query_y).double().mean())
            changed += int((pred_whole != pred_single).sum())
            n_queries += n_q
    assert_state_unchanged(learner, before, f"the leak check with policy {policy!r}")
    acc_whole = acc_whole / count
    if error is not None:
        return LeakReport(
            policy=policy, n_episodes=count, n_queries=n_queries, max_abs_logit_diff=None, tolerance=0.0,
            acc_whole=acc_whole, acc_single=None, acc_diff=None, changed_predictions=0, single_query_error=error,
        )  # fmt: skip
    acc_single = acc_single / count
    tolerance = _REL_TOL * max(1.0, max_logit)
    return LeakReport(
        policy=policy,
        n_episodes=count,
        n_queries=n_queries,
        max_abs_logit_diff=max_diff,
        tolerance=tolerance,
        acc_whole=acc_whole,
        acc_single=acc_single,
        acc_diff=acc_whole - acc_single,
        changed_predictions=changed,
    )
