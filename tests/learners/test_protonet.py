"""Prototypical Networks (fewshot.learners.protonet): logits, policies, state, learning, errors."""

from __future__ import annotations

import math

import pytest
import torch

import fewshot.norms as norms
from fewshot import backbones, learners
from fewshot.learners.base import MIN_QUERY_ROWS, accuracy, rowwise
from fewshot.norms.state import norm_layers


def _with_query(ep, start: int, stop: int):
    return type(ep)(ep.support_x, ep.support_y, ep.query_x[start:stop], ep.query_y[start:stop], ep.class_ids,
                    ep.support_ids, ep.query_ids[start:stop], ep.index)  # fmt: skip


class _Identity(torch.nn.Module):
    """A "backbone" returning its input flattened, to test the metric in closed form."""

    def forward(self, x):
        return x.flatten(1)


def test_logits_are_negative_squared_distances_to_class_means():
    learner = learners.create("protonet", _Identity())
    support_z = torch.tensor([[0.0, 0.0], [2.0, 0.0], [0.0, 4.0], [1.0, 1.0]])
    support_y = torch.tensor([0, 0, 1, 2])  # means: (1, 0), (0, 4), (1, 1)
    query_z = torch.tensor([[1.0, 2.0]])
    expected = -torch.tensor([[4.0, 5.0, 1.0]])
    assert torch.equal(learner.logits(support_z, support_y, query_z, 3), expected)
    perm = torch.tensor([3, 1, 2, 0])  # support order does not matter
    assert torch.equal(learner.logits(support_z[perm], support_y[perm], query_z, 3), expected)


@pytest.mark.parametrize("learn", [True, False])
def test_cosine_logits_are_scaled_cosines(learn):
    learner = learners.create("protonet", _Identity(), distance="cosine", temperature=0.5, learn_temperature=learn)
    assert (learner.log_temperature is not None) == learn
    assert learner.temperature == pytest.approx(0.5)
    logits = learner.logits(torch.tensor([[3.0, 0.0], [0.0, 2.0]]), torch.tensor([0, 1]), torch.tensor([[1.0, 1.0]]), 2)
    torch.testing.assert_close(logits, torch.full((1, 2), math.sqrt(0.5) / 0.5))


def test_training_forward_is_one_pass_over_support_and_query(tiny_backbone, episode_factory):
    # policy running/batch in training: BN statistics over the whole episode (the reference implementation).
    torch.manual_seed(0)
    learner = learners.create("protonet", tiny_backbone())
    ep = episode_factory(0)
    calls = []
    learner.backbone.register_forward_hook(lambda m, args, out: calls.append(args[0].shape[0]))
    learner.meta_loss([ep], policy="running")
    assert calls == [30]
    calls.clear()
    learner.meta_loss([ep], policy="support")
    assert calls == [5, 25]
    layer = learner.backbone.norm1
    assert int(layer.num_batches_tracked) == 2  # running: one update; support: the support forward only
    calls.clear()
    learner.predict(ep, policy="running")
    assert calls == [5, 25]
    calls.clear()
    learner.predict(ep, policy="transductive")
    assert calls == [30]


@pytest.mark.parametrize("norm", norms.names())
@pytest.mark.parametrize("policy", ["transductive", "support", "running"])
def test_predict_changes_no_parameter_buffer_mode_or_policy(episode_factory, snapshot, norm, policy):
    torch.manual_seed(0)
    learner = learners.create("protonet", backbones.create("conv4", in_channels=8, hidden=8, norm=norm))
    learner.meta_loss([episode_factory(3, size=16)])
    learner.train()
    before = snapshot(learner)
    logits = learner.predict(episode_factory(0, size=16), policy=policy)
    assert logits.shape == (25, 5) and torch.isfinite(logits).all()
    after = snapshot(learner)
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert all(m.training for m in learner.modules())
    fixed = {layer: layer.fixed_policy for layer in norm_layers(learner)}
    assert all(layer.policy == (fixed[layer] or "running") for layer in fixed)


@pytest.mark.parametrize(
    ("threads", "channels_last", "norm"),
    [(1, False, "batchnorm"), (1, False, "swbn"), (1, True, "batchnorm"), (1, True, "swbn"), (2, False, "batchnorm"),
     (2, True, "swbn")],
)  # fmt: skip
def test_support_and_running_policies_score_each_query_independently(
    episode_factory, num_threads, threads, norm, channels_last
):
    # Full-size Conv-4 on 28x28 images, where PyTorch's kernels would differ between batch sizes (see rowwise).
    num_threads(threads)
    torch.manual_seed(0)
    backbone = backbones.create("conv4", in_channels=8, norm=norm)
    learner = learners.create("protonet", backbone, channels_last=channels_last)
    if channels_last:
        learner = learner.to(memory_format=torch.channels_last)
    learner.meta_loss([_upsample(episode_factory(3), 28)])
    ep = _upsample(episode_factory(0, n_query=4), 28)  # 20 query rows
    for policy in ("support", "running"):
        whole = learner.predict(ep, policy=policy)
        rows = [0, 6, 13, 19]
        one_by_one = torch.cat([learner.predict(_with_query(ep, i, i + 1), policy=policy) for i in rows])
        assert torch.equal(whole[rows], one_by_one), policy
    whole = learner.predict(ep, policy="transductive")
    assert (whole[:10] - learner.predict(_with_query(ep, 0, 10), policy="transductive")).abs().max() > 1e-4


def _upsample(ep, size: int):
    up = torch.nn.functional.interpolate
    return type(ep)(up(ep.support_x, size=size), ep.support_y, up(ep.query_x, size=size), ep.query_y, ep.class_ids,
                    ep.support_ids, ep.query_ids, ep.index)  # fmt: skip


def test_accuracy_is_the_fraction_of_correct_argmaxes():
    logits = torch.tensor([[0.0, 1.0], [2.0, 1.0], [0.0, 3.0], [5.0, 4.0]])
    assert accuracy(logits, torch.tensor([1, 0, 0, 1])) == 0.5


def test_rowwise_pads_small_batches_and_keeps_the_format():
    seen = []

    def fn(x):
        seen.append((x.shape[0], x.is_contiguous(memory_format=torch.channels_last)))
        return x * 2

    x = torch.randn(3, 2, 4, 4).contiguous(memory_format=torch.channels_last)
    assert torch.equal(rowwise(fn, x), x * 2)
    assert seen == [(MIN_QUERY_ROWS, True)]
    big = torch.randn(MIN_QUERY_ROWS + 1, 2)
    assert torch.equal(rowwise(fn, big), big * 2) and seen[-1][0] == MIN_QUERY_ROWS + 1


def test_rowwise_never_pads_a_batch_whose_statistics_mix_its_rows():
    torch.manual_seed(0)
    layer = norms.create("tasknorm", 4).eval()  # no running state: the batch it is given is its context
    x = torch.randn(5, 4, 3, 3)  # fewer than MIN_QUERY_ROWS: padding would add repeated rows to the context
    assert torch.equal(rowwise(layer, x), layer(x))
    assert torch.equal(rowwise(lambda v: layer(v) * 2, x, model=layer), layer(x) * 2)
    assert not torch.equal(rowwise(lambda v: layer(v), x), layer(x))  # a bare function is taken as row-independent
    one = x[:1]  # a single row cannot be a batch (N >= 2) but its copies have its statistics: padded, exact
    torch.testing.assert_close(rowwise(layer, one), layer(torch.cat([one, one]))[:1], rtol=1e-6, atol=1e-6)


def test_tasknorm_under_running_takes_its_query_context_from_the_queries_alone(tiny_backbone, episode_factory):
    torch.manual_seed(0)
    learner = learners.create("protonet", tiny_backbone(norm="tasknorm")).eval()
    ep = episode_factory(0, n_query=1)  # 5 query rows
    with torch.no_grad():
        support_z = learner.backbone(learner.prepare(ep.support_x))
        expected = learner.logits(support_z, ep.support_y, learner.backbone(learner.prepare(ep.query_x)), 5)
        torch.testing.assert_close(learner.predict(ep, policy="running"), expected, rtol=0, atol=0)


@pytest.mark.parametrize("distance", ["euclidean", "cosine"])
def test_meta_learning_beats_chance_on_new_classes(tiny_backbone, episode_factory, evaluate, distance):
    torch.manual_seed(0)
    learner = learners.create("protonet", tiny_backbone(), distance=distance)
    assert evaluate(learner, "running", world=1) < 0.4  # untrained: near chance (0.2)
    opt = torch.optim.Adam(learner.parameters(), lr=0.01)
    for step in range(100):
        loss, metrics = learner.meta_loss([episode_factory(step)], policy="running")
        opt.zero_grad()
        loss.backward()
        opt.step()
    for policy in ("running", "support", "transductive"):
        assert evaluate(learner, policy, world=1) >= 0.8, policy


def test_meta_batch_loss_is_the_mean_of_episode_losses(tiny_backbone, episode_factory):
    torch.manual_seed(0)
    learner = learners.create("protonet", tiny_backbone(), channels_last=True)
    a, b = episode_factory(0), episode_factory(1)
    with norms.frozen_stats(learner):
        both, metrics = learner.meta_loss([a, b], policy="transductive")
        la, ma = learner.meta_loss([a], policy="transductive")
        lb, mb = learner.meta_loss([b], policy="transductive")
    torch.testing.assert_close(both, (la + lb) / 2)
    assert metrics["acc"] == pytest.approx((ma["acc"] + mb["acc"]) / 2)
    assert metrics["loss"] == pytest.approx(both.item())


def test_bad_options_and_episodes_raise(tiny_backbone, episode_factory):
    with pytest.raises(ValueError, match="distance must be one of"):
        learners.create("protonet", tiny_backbone(), distance="manhattan")
    with pytest.raises(ValueError, match="temperature applies to distance='cosine' only"):
        learners.create("protonet", tiny_backbone(), temperature=0.1)
    with pytest.raises(TypeError, match="unknown option.*'distanse'.*distance"):
        learners.create("protonet", tiny_backbone(), distanse="cosine")
    with pytest.raises(KeyError, match="did you mean 'protonet'"):
        learners.create("protonett", tiny_backbone())
    learner = learners.create("protonet", tiny_backbone())
    ep = episode_factory(0)
    missing = type(ep)(ep.support_x[:4], ep.support_y[:4], ep.query_x, ep.query_y, ep.class_ids, ep.support_ids[:4],
                       ep.query_ids, ep.index)  # fmt: skip
    with pytest.raises(ValueError, match=r"every label 0..4 at least once, got counts \[1, 1, 1, 1, 0\]"):
        learner.meta_loss([missing])
    with pytest.raises(ValueError, match="at least one episode"):
        learner.meta_loss([])
    assert sorted(learners.names()) == ["classifier", "maml", "protonet"]
