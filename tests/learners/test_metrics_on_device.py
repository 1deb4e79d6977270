"""Learners return their step metrics as detached 0-dim tensors whose values are the old host floats exactly.

``meta_loss`` used to read ``loss.item()`` and count correct queries with ``int(...)`` (one wait for the device
per step on a GPU). The metrics now stay tensors on the model's device: ``loss`` is the loss's own value (its
dtype), ``acc`` is float64 total correct / total rows, which rounds exactly as Python's ``correct / total``.
"""

from __future__ import annotations

import importlib

import pytest
import torch

from fewshot import learners
from fewshot.learners.base import accuracy
from fewshot.learners.classifier import Classifier

NAMES = tuple(f"class{c:02d}" for c in range(50))  # the synthetic world's classes (conftest.make_episode)


def _build(name: str, tiny_backbone):  # noqa: ANN001, ANN202
    torch.manual_seed(0)
    if name == "maml":
        return learners.create("maml", tiny_backbone(), n_way=5, image_size=8, inner_steps=1)
    if name == "classifier":
        return Classifier(tiny_backbone(), n_classes=len(NAMES), image_size=8, class_names=NAMES)
    return learners.create("protonet", tiny_backbone())


@pytest.mark.parametrize("name", ["protonet", "maml", "classifier"])
def test_metrics_are_detached_0_dim_tensors_equal_to_the_host_floats(name, tiny_backbone, episode_factory, monkeypatch):
    learner = _build(name, tiny_backbone)
    episodes = [episode_factory(s, n_query=3) for s in range(3)]
    scored = []

    def spy(logits, labels):  # noqa: ANN001, ANN202 - records what the step scores
        scored.append(([lg.detach().clone() for lg in logits], list(labels)))
        return accuracy(logits, labels)

    monkeypatch.setattr(importlib.import_module(f"fewshot.learners.{name}"), "accuracy", spy)
    loss, metrics = learner.meta_loss(episodes, policy="running")
    assert set(metrics) == {"loss", "acc"}
    for value in metrics.values():
        assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad
    assert metrics["loss"].dtype == loss.dtype and metrics["acc"].dtype == torch.float64
    assert metrics["loss"].item() == loss.item()  # the value the old float metric held

    [(logits, labels)] = scored  # one call, pooling every episode of the meta-batch
    if name == "classifier":  # every image of the episode, labelled among all training classes
        rows = [ep.support_y.shape[0] + ep.query_y.shape[0] for ep in episodes]
    else:
        rows = [ep.query_y.shape[0] for ep in episodes]
        assert all(torch.equal(y, ep.query_y) for y, ep in zip(labels, episodes, strict=True))
    assert [lg.shape[0] for lg in logits] == [y.shape[0] for y in labels] == rows
    correct = sum(int((lg.argmax(-1) == y).sum()) for lg, y in zip(logits, labels, strict=True))
    if name != "classifier":  # (the untrained 50-class head scores nothing yet)
        assert 0 < correct < sum(rows)  # a real fraction, not a trivial 0 or 1
    assert metrics["acc"].item() == correct / sum(rows)  # the old metric, bit for bit


def test_accuracy_pools_every_pair_and_divides_like_python():
    logits = [torch.eye(3)[[0, 1, 2]], torch.eye(3)[[0, 0, 0, 1]]]
    labels = [torch.tensor([0, 1, 1]), torch.tensor([0, 1, 2, 1])]
    acc = accuracy(logits, labels)
    assert acc.dtype == torch.float64 and acc.dim() == 0
    assert acc.item() == 4 / 7  # 2 + 2 correct of 3 + 4 rows, not the mean of 2/3 and 2/4
    assert accuracy(logits[0], labels[0]).item() == 2 / 3
