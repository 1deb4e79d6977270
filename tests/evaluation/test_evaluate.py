"""Tests of fewshot.evaluation.evaluate and the run-directory outputs of an evaluation."""

import math

import numpy as np
import pytest
import torch

from fewshot.evaluation.evaluate import evaluate_episodes
from fewshot.evaluation.outputs import find_reusable, read_episode_accuracies, read_summary, write_eval


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
        evaluate_episodes(FixedLogits(), episodes, policy="batch")


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
