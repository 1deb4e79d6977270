"""The supervised pre-training learner: cross-entropy over all training classes, ProtoNet at meta-test."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot.learners import LEARNERS
from fewshot.learners.classifier import Classifier
from fewshot.learners.protonet import ProtoNet

NAMES = tuple(f"class{c:02d}" for c in range(50))  # the synthetic world's classes (conftest.make_episode)


def _learner(tiny_backbone, **kwargs):
    torch.manual_seed(0)
    return Classifier(tiny_backbone(), n_classes=len(NAMES), image_size=8, class_names=NAMES, **kwargs)


def test_it_is_registered_and_its_head_covers_every_training_class(tiny_backbone):
    learner = _learner(tiny_backbone)
    assert LEARNERS.get("classifier") is Classifier
    assert (learner.head.in_features, learner.head.out_features) == (16, 50)


def test_loss_is_cross_entropy_of_all_images_among_all_classes(tiny_backbone, episode_factory):
    learner = _learner(tiny_backbone)
    episodes = [episode_factory(1, n_way=4, n_shot=2, n_query=3), episode_factory(2, n_way=4, n_shot=2, n_query=3)]
    loss, metrics = learner.meta_loss(episodes)

    expected, hits, total = [], 0, 0
    for ep in episodes:
        per_class = torch.tensor([NAMES.index(c) for c in ep.class_ids])
        labels = per_class[torch.cat([ep.support_y, ep.query_y])]
        # train mode: batch statistics, as in meta_loss (no optimizer step happened, so the weights are the same)
        logits = learner.head(learner.backbone.train()(torch.cat([ep.support_x, ep.query_x])))
        expected.append(F.cross_entropy(logits, labels))
        hits += int((logits.argmax(-1) == labels).sum())
        total += labels.numel()
    torch.testing.assert_close(loss, torch.stack(expected).mean(), rtol=1e-5, atol=1e-6)
    assert metrics["acc"] == pytest.approx(hits / total)
    loss.backward()
    assert learner.head.weight.grad is not None and learner.head.weight.grad.abs().sum() > 0


def test_meta_test_scores_like_protonet_with_the_same_backbone(tiny_backbone, episode_factory):
    learner = _learner(tiny_backbone, distance="cosine")
    proto = ProtoNet(learner.backbone, distance="cosine")
    ep = episode_factory(5)
    for policy in ("running", "transductive", "support"):
        assert torch.equal(learner.predict(ep, policy=policy), proto.predict(ep, policy=policy))


def test_a_learner_built_to_evaluate_refuses_to_train(tiny_backbone, episode_factory):
    torch.manual_seed(0)
    learner = Classifier(tiny_backbone(), n_classes=50, image_size=8)  # no class names: evaluation only
    assert learner.predict(episode_factory(1), policy="running").shape == (25, 5)
    with pytest.raises(RuntimeError, match="without the training split's class names"):
        learner.meta_loss([episode_factory(1)])


def test_bad_inputs_raise_with_the_fix(tiny_backbone, episode_factory):
    with pytest.raises(ValueError, match="n_classes=3 but the training split has 50 classes"):
        Classifier(tiny_backbone(), n_classes=3, image_size=8, class_names=NAMES)
    with pytest.raises(ValueError, match="n_classes must be an int >= 2"):
        Classifier(tiny_backbone(), n_classes=1, image_size=8)
    learner = Classifier(tiny_backbone(), n_classes=2, image_size=8, class_names=("a", "b"))
    with pytest.raises(ValueError, match="not one of the classifier's 2 training classes"):
        learner.meta_loss([episode_factory(1)])
    with pytest.raises(ValueError, match="no support set"):
        _learner(tiny_backbone).meta_loss([episode_factory(1)], policy="support")
