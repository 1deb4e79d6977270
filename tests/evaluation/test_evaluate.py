"""Tests of fewshot.evaluation.evaluate and the run-directory outputs of an evaluation."""

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fewshot.errors import ConfigError
from fewshot.evaluation.compare import check_comparable
from fewshot.evaluation.evaluate import evaluate_episodes
from fewshot.evaluation.outputs import find_reusable, read_episode_accuracies, read_summary, write_eval
from fewshot.evaluation.run_eval import resolve_request


class FixedLogits(torch.nn.Module):
    """Predicts class 0 for every query: accuracy = share of class-0 queries."""

    def predict(self, episode, *, policy="running"):
        logits = torch.zeros(episode.query_y.shape[0], episode.n_way)
        logits[:, 0] = 1.0
        return logits


def test_per_episode_accuracy_and_summary(episodes):
    result = evaluate_episodes(FixedLogits(), episodes, policy="support")
    # 3-way, 4 queries per class, everything predicted as class 0: 4 of 12 right in every episode
    assert np.array_equal(result.n_correct, np.full(6, 4)) and np.array_equal(result.n_query_total, np.full(6, 12))
    assert np.allclose(result.acc, 1 / 3)
    assert result.index.tolist() == [0, 1, 2, 3, 4, 5]
    assert (result.n_way, result.n_shot, result.n_query, result.policy) == (3, 2, 4, "support")
    assert result.summary.mean == pytest.approx(1 / 3) and result.summary.ci95 == pytest.approx(0.0)


def test_accuracy_matches_manual_count(episodes, centroid_learner):
    learner = centroid_learner()
    result = evaluate_episodes(learner, episodes)
    for pos, ep in enumerate(episodes):
        manual = (learner.predict(ep).argmax(1) == ep.query_y).float().mean().item()
        assert result.acc[pos] == pytest.approx(manual)
    assert result.summary.mean == pytest.approx(float(np.mean(result.acc)))
    assert result.summary.ci95 == pytest.approx(1.96 * np.std(result.acc, ddof=1) / math.sqrt(6))


def test_unknown_policy_is_rejected(episodes):
    with pytest.raises(ValueError, match="unknown test-time normalization policy 'batch'"):
        evaluate_episodes(FixedLogits(), episodes, policy="batch")  # a config name, mapped only in configs


def test_empty_and_mixed_sizes_are_rejected(episodes, episode_factory):
    with pytest.raises(ValueError, match="no episodes"):
        evaluate_episodes(FixedLogits(), [])
    mixed = [*episodes[:2], episode_factory(9, n_way=5)]
    with pytest.raises(ValueError, match="position 2 is 5-way"):
        evaluate_episodes(FixedLogits(), mixed)


def test_wrong_logit_shape_is_rejected(episodes):
    class Wrong(torch.nn.Module):
        def predict(self, episode, *, policy="running"):
            return torch.zeros(episode.query_y.shape[0], episode.n_way + 1)

    with pytest.raises(ValueError, match=r"shape \(12, 4\), expected \(12, 3\)"):
        evaluate_episodes(Wrong(), episodes)


def test_a_learner_that_changes_its_buffers_is_caught(episodes, centroid_learner):
    with pytest.raises(RuntimeError, match="changed the model state \\(offset\\)"):
        evaluate_episodes(centroid_learner(mutate=True), episodes)


def test_write_and_reuse_eval_outputs(tmp_path, episodes, centroid_learner):
    result = evaluate_episodes(centroid_learner(), episodes, policy="running")
    info = {"episode_hash": "ab" * 32, "checkpoint": "best", "checkpoint_sha256": "c" * 64, "seed": 7}
    folder = write_eval(tmp_path, result, info)
    assert folder == tmp_path / "eval" / f"{'ab' * 8}-running"
    summary = read_summary(folder)
    assert summary["mean"] == pytest.approx(result.summary.mean) and summary["n"] == 6
    assert (summary["way"], summary["shot"], summary["query"], summary["seed"]) == (3, 2, 4, 7)
    assert np.array_equal(read_episode_accuracies(folder), result.acc)
    assert find_reusable(tmp_path, "ab" * 32, "running", "best", "c" * 64) == folder
    assert find_reusable(tmp_path, "ab" * 32, "running", "best", "d" * 64) is None  # checkpoint changed
    assert find_reusable(tmp_path, "ab" * 32, "support", "best", "c" * 64) is None  # other policy


def _cfg(**eval_overrides):
    ev = {"n_way": 5, "n_shot": 1, "n_query": 15, "episodes": 600, "seed": 1234, "within_alphabet": False,
          "norm_policy": "running", **eval_overrides}  # fmt: skip
    data = SimpleNamespace(dataset="omniglot", protocol="vinyals", test_split="test", options={"image_size": 28})
    return SimpleNamespace(eval=SimpleNamespace(**ev), data=data)


def test_resolve_request_applies_overrides_and_rejects_bad_values():
    r = resolve_request(_cfg(), n_way=20, n_shot=5, episodes=100, policy="support")
    assert (r.n_way, r.n_shot, r.n_query, r.episodes, r.seed, r.policy) == (20, 5, 15, 100, 1234, "support")
    assert resolve_request(_cfg()).policy == "running"
    with pytest.raises(ConfigError, match="unknown test-time normalization policy 'batch'"):
        resolve_request(_cfg(), policy="batch")
    with pytest.raises(ConfigError, match="n_query must be a positive integer, got 0"):
        resolve_request(_cfg(), n_query=0)


def test_runs_on_other_episodes_are_not_comparable():
    check_comparable([_cfg(), _cfg(norm_policy="transductive")], ["a", "b"])  # policies may differ
    other = _cfg()
    other.data.options = {"image_size": 84}
    with pytest.raises(ConfigError, match=r"data.options is \{'image_size': 28\} in 'a' but \{'image_size': 84\}"):
        check_comparable([_cfg(), other], ["a", "b"])
    with pytest.raises(ConfigError, match="eval.n_shot is 1 in 'a' but 5 in 'c'"):
        check_comparable([_cfg(), _cfg(), _cfg(n_shot=5)], ["a", "b", "c"])
