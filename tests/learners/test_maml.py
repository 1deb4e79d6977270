"""MAML / first-order MAML / ANIL (fewshot.learners.maml): meta-gradients, norm-state handling, policies, learning."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import fewshot.learners.maml as maml_module
import fewshot.norms as norms
from fewshot import backbones, learners
from fewshot.learners.base import rowwise
from fewshot.learners.maml import MAML
from fewshot.norms.kernels import primitive_kernels
from fewshot.norms.state import norm_layers


def _maml(backbone, **kwargs) -> MAML:
    kwargs.setdefault("head_init", "default")
    kwargs.setdefault("image_size", 8)
    return learners.create("maml", backbone, n_way=5, **kwargs)


# ----------------------------------------------------------------------------------------------- meta-gradient
def _meta_loss_value(learner: MAML, episodes) -> float:
    return learner.meta_loss(episodes, policy="transductive")[0].item()


@pytest.mark.parametrize("anil", [False, True], ids=["maml", "anil"])
def test_second_order_meta_gradient_matches_finite_differences(tiny_backbone, episode_factory, anil):
    torch.manual_seed(0)
    learner = _maml(tiny_backbone(hidden=6), inner_lr=0.5, inner_steps=2, anil=anil).double()
    episodes = [episode_factory(s, n_way=5, n_shot=2, n_query=2, dtype=torch.float64) for s in (1, 2)]
    loss, _ = learner.meta_loss(episodes, policy="transductive")
    loss.backward()
    params = dict(learner.named_parameters())
    coords = [("backbone.conv1.weight", (1, 0, 1, 2)), ("backbone.conv2.weight", (3, 2, 0, 1)),
              ("backbone.norm1.weight", (2,)), ("backbone.norm2.bias", (4,)), ("head.weight", (1, 3)),
              ("head.bias", (0,))]  # fmt: skip
    h = 1e-5
    for name, idx in coords:
        p = params[name]
        with torch.no_grad():
            p[idx] += h
            plus = _meta_loss_value(learner, episodes)
            p[idx] -= 2 * h
            minus = _meta_loss_value(learner, episodes)
            p[idx] += h
        fd = (plus - minus) / (2 * h)
        assert p.grad[idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-9), name


def test_first_order_differs_from_second_order_and_detaches_inner_gradient(tiny_backbone, episode_factory):
    torch.manual_seed(0)
    learner = _maml(tiny_backbone(hidden=6), inner_lr=0.5).double()
    episodes = [episode_factory(s, n_shot=2, n_query=2, dtype=torch.float64) for s in (1, 2)]

    def meta_grad(first_order: bool) -> torch.Tensor:
        learner.first_order = first_order
        learner.zero_grad()
        learner.meta_loss(episodes, policy="transductive")[0].backward()
        return torch.cat([p.grad.flatten() for p in learner.parameters()])

    second, first = meta_grad(False), meta_grad(True)
    assert (second - first).norm() > 0.2 * second.norm()  # measured: 0.8-1.0 of the norm over seeds
    # First order = the query-loss gradient at the adapted parameters, taken as a constant offset of θ.
    ep = episodes[0]
    adapted = copy.deepcopy(learner)
    with norms.set_policy(adapted, "transductive"):
        support_loss = F.cross_entropy(adapted(ep.support_x), ep.support_y)
        grads = torch.autograd.grad(support_loss, list(adapted.parameters()))
        with torch.no_grad():
            for p, g in zip(adapted.parameters(), grads, strict=True):
                p -= 0.5 * g
        manual = torch.autograd.grad(F.cross_entropy(adapted(ep.query_x), ep.query_y), list(adapted.parameters()))
    learner.zero_grad()
    learner.meta_loss([ep], policy="transductive")[0].backward()
    for p, g in zip(learner.parameters(), manual, strict=True):
        torch.testing.assert_close(p.grad, g, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("policy", ["transductive", "running", "support"])
def test_meta_gradient_and_norm_state_equal_with_fused_kernels_and_primitive_ops(
    tiny_backbone, episode_factory, policy
):
    """BatchNorm's fused kernel in the inner loop (fewshot.norms.kernels) changes no meta-gradient or state."""
    torch.manual_seed(0)
    learner = _maml(tiny_backbone(hidden=6), inner_lr=0.5, inner_steps=2).double()
    episodes = [episode_factory(s, n_shot=2, n_query=2, dtype=torch.float64) for s in (1, 2)]
    twin = copy.deepcopy(learner)
    learner.meta_loss(episodes, policy=policy)[0].backward()
    with primitive_kernels():
        twin.meta_loss(episodes, policy=policy)[0].backward()
    for (name, p), q in zip(learner.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-10, atol=1e-12, msg=name)
    for (name, b), c in zip(learner.named_buffers(), twin.buffers(), strict=True):
        torch.testing.assert_close(b, c, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.parametrize("norm", norms.names())
@pytest.mark.parametrize("policy", ["transductive", "running", "support"])
def test_second_order_meta_gradient_is_finite_through_every_norm(episode_factory, norm, policy):
    torch.manual_seed(0)
    learner = _maml(backbones.create("conv4", in_channels=8, hidden=8, norm=norm), image_size=16, inner_steps=2)
    loss, metrics = learner.meta_loss([episode_factory(0, size=16), episode_factory(1, size=16)], policy=policy)
    loss.backward()
    assert torch.isfinite(loss) and set(metrics) == {"loss", "acc"}
    for name, p in learner.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in learner.backbone.parameters())


@pytest.mark.parametrize("name", ["conv4", "conv4_maml", "resnet12"])
@pytest.mark.parametrize("first_order", [False, True])
def test_every_backbone_trains_first_and_second_order(episode_factory, name, first_order):
    torch.manual_seed(0)
    kwargs = {"widths": (4, 4, 4, 4)} if name == "resnet12" else {"hidden": 4}
    backbone = backbones.create(name, in_channels=8, **kwargs)
    learner = learners.create("maml", backbone, n_way=3, image_size=16, first_order=first_order)
    ep = episode_factory(0, n_way=3, n_query=2, size=16)
    loss, _ = learner.meta_loss([ep], policy="transductive")
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in learner.parameters())
    assert learner.predict(ep, policy="running").shape == (6, 3)


# ----------------------------------------------------------------------------------------------- norm state
@pytest.mark.parametrize("norm", norms.names())
@pytest.mark.parametrize("policy", ["transductive", "support", "running"])
def test_predict_changes_no_parameter_buffer_mode_or_policy(episode_factory, snapshot, norm, policy):
    torch.manual_seed(0)
    backbone = backbones.create("conv4", in_channels=8, hidden=8, norm=norm)
    learner = _maml(backbone, image_size=16, eval_inner_steps=3)
    learner.meta_loss([episode_factory(5, size=16)], policy="running")  # non-trivial running state
    learner.train()
    before = snapshot(learner)
    logits = learner.predict(episode_factory(0, size=16), policy=policy)
    assert logits.shape == (25, 5) and torch.isfinite(logits).all()
    after = snapshot(learner)
    assert before.keys() == after.keys()
    for key in before:
        assert torch.equal(before[key], after[key]), key
    assert all(m.training for m in learner.modules())
    fixed = {layer: layer.fixed_policy for layer in norm_layers(learner)}
    assert all(layer.policy == (fixed[layer] or "running") for layer in fixed)


@pytest.mark.parametrize("policy", ["transductive", "running", "support"])
def test_meta_loss_updates_norm_state_once_per_task_at_the_meta_parameters(tiny_backbone, episode_factory, policy):
    torch.manual_seed(0)
    learner = _maml(tiny_backbone(), inner_steps=3, norm_state_update="task")
    episodes = [episode_factory(s) for s in range(3)]
    learner.meta_loss(episodes, policy=policy)
    for layer in norm_layers(learner):
        assert int(layer.num_batches_tracked) == 3
    # BatchNorm's running mean after one task = 0.9 * 0 + 0.1 * (support batch mean at the meta-parameters).
    fresh = _maml(tiny_backbone(), inner_steps=3, norm_state_update="task")
    fresh.load_state_dict(learner.state_dict())
    for layer in norm_layers(fresh):
        layer.reset_running_stats()
    fresh.meta_loss(episodes[:1], policy="transductive")
    expected = fresh.backbone.conv1(episodes[0].support_x).mean(dim=(0, 2, 3)) * 0.1
    torch.testing.assert_close(fresh.backbone.norm1.running_mean, expected)


@pytest.mark.parametrize("policy", ["transductive", "running", "support"])
def test_meta_loss_updates_norm_state_once_per_meta_batch_on_all_supports(tiny_backbone, episode_factory, policy):
    torch.manual_seed(0)
    learner = _maml(tiny_backbone(), inner_steps=2)
    assert learner.norm_state_update == "meta_batch"  # the default (norms-spec 2.14: one update per outer step)
    episodes = [episode_factory(s) for s in range(3)]
    before = learner.backbone.conv1(torch.cat([ep.support_x for ep in episodes])).detach()
    loss, _ = learner.meta_loss(episodes, policy=policy)
    loss.backward()  # the committed state leaves the outer backward valid
    for layer in norm_layers(learner):
        assert int(layer.num_batches_tracked) == 1
    # One EMA step from 0 with the mean of the three support sets together, at the meta-parameters.
    torch.testing.assert_close(learner.backbone.norm1.running_mean, before.mean(dim=(0, 2, 3)) * 0.1)
    # The update does not change this meta-step's loss: every task read the state as it was before it.
    per_task = _maml(tiny_backbone(), inner_steps=2, norm_state_update="task")
    per_task.load_state_dict(learner.state_dict())
    other = _maml(tiny_backbone(), inner_steps=2)
    other.load_state_dict(learner.state_dict())
    torch.testing.assert_close(
        per_task.meta_loss(episodes, policy=policy)[0], other.meta_loss(episodes, policy=policy)[0]
    )
    with pytest.raises(ValueError, match="norm_state_update must be one of 'meta_batch', 'task', got 'step'"):
        _maml(tiny_backbone(), norm_state_update="step")


def test_no_state_leaks_between_tasks(tiny_backbone, episode_factory):
    torch.manual_seed(0)
    learner = _maml(tiny_backbone())
    learner.meta_loss([episode_factory(9)], policy="running")
    a, b = episode_factory(0), episode_factory(1)
    for policy in ("transductive", "support", "running"):
        alone = learner.predict(b, policy=policy)
        learner.predict(a, policy=policy)
        assert torch.equal(learner.predict(b, policy=policy), alone), policy
    learner.meta_loss([a], policy="support")
    # Nothing is left behind: a query forward with no support statistics given raises.
    with norms.set_policy(learner, "support"), pytest.raises(RuntimeError, match="no support statistics"):
        learner(b.query_x)


# ----------------------------------------------------------------------------------------------- policies
@pytest.mark.parametrize("norm", ["batchnorm", "swbn"])
@pytest.mark.parametrize("anil", [False, True], ids=["maml", "anil"])
def test_support_and_running_policies_score_each_query_independently(tiny_backbone, episode_factory, norm, anil):
    # Single-threaded here; test_protonet checks the kernels' batch invariance with 2 threads at full size.
    torch.manual_seed(0)
    learner = _maml(tiny_backbone(norm=norm), anil=anil)
    learner.meta_loss([episode_factory(7)], policy="running")
    ep = episode_factory(0, n_query=4)  # 20 query rows: scored whole, and one at a time (padded, see rowwise)
    for policy in ("support", "running"):
        whole = learner.predict(ep, policy=policy)
        rows = [0, 6, 13, 19]
        one_by_one = torch.cat([learner.predict(_with_query(ep, i, i + 1), policy=policy) for i in rows])
        assert torch.equal(whole[rows], one_by_one), policy
    whole = learner.predict(ep, policy="transductive")
    first_half = learner.predict(_with_query(ep, 0, 10), policy="transductive")
    assert (whole[:10] - first_half).abs().max() > 1e-4


def test_a_query_batch_that_is_its_own_context_is_not_padded(tiny_backbone, episode_factory):
    torch.manual_seed(0)
    learner = _maml(tiny_backbone(norm="tasknorm"))
    learner.eval()
    xq = episode_factory(0, n_query=1).query_x  # 5 rows, fewer than rowwise's padding threshold
    run = maml_module._query_runner(True, norms.Policy.RUNNING, learner)
    with torch.no_grad():
        assert torch.equal(run(lambda x: learner(x), xq), learner(xq))  # TaskNorm's context: these 5 rows alone
        with norms.set_policy(learner, "support"), norms.using(learner, _support_stats(learner, xq)):
            padded = maml_module._query_runner(True, norms.Policy.SUPPORT, learner)(lambda x: learner(x), xq)
            assert torch.equal(padded, rowwise(lambda x: learner(x), xq))  # given statistics: rows independent


def _support_stats(learner, xs):
    with norms.collect(learner) as stats:
        learner(xs)
    return stats


def _with_query(ep, start: int, stop: int):
    return type(ep)(ep.support_x, ep.support_y, ep.query_x[start:stop], ep.query_y[start:stop], ep.class_ids,
                    ep.support_ids, ep.query_ids[start:stop], ep.index)  # fmt: skip


def test_predict_adapts_with_eval_steps_and_matches_a_manual_sgd_step(tiny_backbone, episode_factory):
    torch.manual_seed(0)
    ep = episode_factory(0)
    learner = _maml(tiny_backbone(), eval_inner_steps=0)
    learner.meta_loss([episode_factory(3)], policy="running")
    learner.eval()
    with torch.no_grad():
        torch.testing.assert_close(learner.predict(ep, policy="running"), learner(ep.query_x), rtol=0, atol=0)
    learner.eval_inner_steps, learner.eval_inner_lr = 1, 0.3
    manual = copy.deepcopy(learner)
    grads = torch.autograd.grad(F.cross_entropy(manual(ep.support_x), ep.support_y), list(manual.parameters()))
    with torch.no_grad():
        for p, g in zip(manual.parameters(), grads, strict=True):
            p -= 0.3 * g
        torch.testing.assert_close(learner.predict(ep, policy="running"), manual(ep.query_x))


def test_anil_and_adapt_norm_choose_the_adapted_parameters(tiny_backbone):
    names = {n for n, _ in _maml(tiny_backbone()).named_parameters()}
    assert set(_maml(tiny_backbone()).adapted_parameter_names()) == names
    assert _maml(tiny_backbone(), anil=True).adapted_parameter_names() == ["head.weight", "head.bias"]
    no_norm = set(_maml(tiny_backbone(), adapt_norm=False).adapted_parameter_names())
    assert names - no_norm == {f"backbone.norm{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}


def test_meta_learning_beats_chance_on_new_classes(tiny_backbone, episode_factory, evaluate):
    torch.manual_seed(0)
    learner = _maml(tiny_backbone(), inner_lr=0.5, eval_inner_steps=1)
    assert evaluate(learner, "transductive", world=1) < 0.4  # untrained: near chance (0.2)
    opt = torch.optim.Adam(learner.parameters(), lr=0.01)
    for step in range(150):  # 0.92-0.94 on seeds 0-5
        loss, _ = learner.meta_loss([episode_factory(2 * step), episode_factory(2 * step + 1)], policy="transductive")
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert evaluate(learner, "transductive", world=1) >= 0.8


@pytest.mark.parametrize("head_init", ["normal", "xavier", "default"])
def test_head_init_draws_the_reference_distribution(head_init):
    """normal: N(0, 1) (the reference code's Omniglot head); xavier: U(-a, a) with a = sqrt(6 / (fan_in + fan_out))
    (its miniImageNet head); default: nn.Linear's U(-1/sqrt(fan_in), 1/sqrt(fan_in)). Biases zero but the default's."""
    torch.manual_seed(0)
    backbone = backbones.create("conv4", in_channels=3, norm="batchnorm", hidden=32)
    learner = learners.create("maml", backbone, n_way=5, image_size=84, head_init=head_init)
    w, b = learner.head.weight, learner.head.bias
    assert w.shape == (5, 800)
    bound = {"normal": None, "xavier": (6 / 805) ** 0.5, "default": 800**-0.5}[head_init]
    if bound is None:
        assert abs(w.std().item() - 1) < 0.05 and abs(w.mean().item()) < 0.05 and w.abs().max() > 2
    else:  # uniform on (-bound, bound): its extremes near the bound, its std bound / sqrt(3)
        assert w.abs().max() <= bound and w.abs().max() > 0.99 * bound
        assert abs(w.std().item() - bound / 3**0.5) < 0.05 * bound
    assert (b == 0).all() == (head_init != "default")


# ----------------------------------------------------------------------------------------------- errors
def test_bad_options_and_episodes_raise(tiny_backbone, episode_factory):
    with pytest.raises(ValueError, match="inner_lr must be a number > 0"):
        _maml(tiny_backbone(), inner_lr=0)
    with pytest.raises(ValueError, match="head_init must be one of 'normal', 'xavier', 'default', got 'glorot'"):
        _maml(tiny_backbone(), head_init="glorot")
    with pytest.raises(TypeError, match="unknown option.*'inner_step'.*inner_steps"):
        _maml(tiny_backbone(), inner_step=3)
    learner = _maml(tiny_backbone())
    with pytest.raises(ValueError, match="3 classes but the learner was built for n_way=5"):
        learner.meta_loss([episode_factory(0, n_way=3)])
    with pytest.raises(ValueError, match=r"meta-training norm policy \(train.norm_policy\) must be one of"):
        learner.meta_loss([episode_factory(0)], policy="batch")  # the config name, mapped only in configs
    with pytest.raises(ValueError, match="meta-test norm policy .*must be one of"):
        learner.predict(episode_factory(0), policy="batch")


# ----------------------------------------------------------------------------------------------- state as values
@pytest.mark.parametrize("update", ["meta_batch", "task"])
@pytest.mark.parametrize("norm", ["batchnorm", "swbn"])
def test_the_state_update_equals_plain_training_forwards_of_the_supports(tiny_backbone, episode_factory, norm, update):
    """The next state is that of plain train-mode forwards (fewshot 0.2's update): joined supports, or each in turn."""
    torch.manual_seed(0)
    learner = _maml(tiny_backbone(norm=norm), inner_steps=1, norm_state_update=update)
    reference = copy.deepcopy(learner.backbone).train()
    episodes = [episode_factory(s) for s in range(3)]
    learner.meta_loss(episodes, policy="running")
    with torch.no_grad():
        if update == "meta_batch":
            reference(torch.cat([ep.support_x for ep in episodes]))
        else:
            for ep in episodes:
                reference(ep.support_x)
    for (name, got), (_, want) in zip(learner.backbone.named_buffers(), reference.named_buffers(), strict=True):
        assert torch.equal(got, want), name


def test_merged_task_statistics_equal_the_joined_supports_at_the_first_layer_only(tiny_backbone, episode_factory):
    """Why MAML's state pass runs the joined supports: merging is exact for a layer's inputs as given, but past the
    first layer the inputs themselves differ (each task's were normalized with its own statistics)."""
    torch.manual_seed(0)
    backbone = tiny_backbone().double().train()
    supports = [episode_factory(s, dtype=torch.float64).support_x for s in range(3)]
    with torch.no_grad(), norms.frozen_stats(backbone):
        parts = []
        for xs in supports:
            with norms.collect(backbone) as stats:
                backbone(xs)
            parts.append(stats)
        with norms.collect(backbone) as joined:
            backbone(torch.cat(supports))
    merged = norms.merge(backbone, parts)
    torch.testing.assert_close(merged["norm1"].mean, joined["norm1"].mean, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(merged["norm1"].var, joined["norm1"].var, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(merged["norm2"].mean, joined["norm2"].mean, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("policy", ["transductive", "support"])
@pytest.mark.parametrize("norm", ["batchnorm", "swbn", "tasknorm"])
def test_vmap_over_tasks_equals_the_loop_second_order(tiny_backbone, episode_factory, norm, policy):
    torch.manual_seed(0)
    kwargs = {"group_size": 8} if norm == "swbn" else {}
    loop = _maml(tiny_backbone(norm=norm, **kwargs), inner_steps=2).double()
    batched = _maml(tiny_backbone(norm=norm, **kwargs), inner_steps=2, vmap_tasks=True).double()
    batched.load_state_dict(loop.state_dict())
    episodes = [episode_factory(s, dtype=torch.float64) for s in range(3)]
    results = []
    for learner in (loop, batched):
        loss, metrics = learner.meta_loss(episodes, policy=policy)
        grads = torch.autograd.grad(loss, list(learner.parameters()), allow_unused=True)
        results.append((loss, metrics["acc"], grads, dict(learner.named_buffers())))
    (loss_a, acc_a, grads_a, state_a), (loss_b, acc_b, grads_b, state_b) = results
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-9, atol=1e-12)
    assert acc_a == acc_b
    for g_a, g_b in zip(grads_a, grads_b, strict=True):
        assert (g_a is None) == (g_b is None)
        if g_a is not None:
            torch.testing.assert_close(g_b, g_a, rtol=1e-9, atol=1e-12)
    for name, value in state_a.items():
        torch.testing.assert_close(state_b[name], value, rtol=1e-9, atol=1e-12)
    with pytest.raises(ValueError, match="vmap_tasks=True needs the meta-batch's tasks in equal shapes"):
        batched.meta_loss([episodes[0], episode_factory(9, n_query=2, dtype=torch.float64)], policy=policy)
