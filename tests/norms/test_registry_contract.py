"""The contract every registered normalization layer must meet, parametrized over ``fewshot.norms.names()``.

A layer registered anywhere in ``fewshot.norms`` is covered automatically. Inputs are tiny (gradgradcheck on
(3, 4, 2, 2) in float64) so the whole file runs in seconds. The class flags select the layers a property
applies to: ``per_sample`` (no batch dependence), ``fixed_policy`` and ``track_running_stats`` (running state).
"""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, grad, vmap

from fewshot.errors import UnknownNameError
from fewshot.norms import NORM_LAYERS, NormLayer, collect, create, frozen_stats, names, using

NAMES = names()
PER_SAMPLE = [n for n in NAMES if NORM_LAYERS.get(n).per_sample]
BATCH_DEPENDENT = [n for n in NAMES if not NORM_LAYERS.get(n).per_sample]
# layers whose policy can be "support" (batch-dependent, policy not fixed to something else)
SUPPORT_CAPABLE = [n for n in BATCH_DEPENDENT if NORM_LAYERS.get(n).fixed_policy in (None, "support")]
C = 8


@pytest.fixture(params=NAMES)
def name(request) -> str:
    return request.param


def _as_function(layer: NormLayer):
    """``f(x, *params) = functional_call(layer, params, x)`` and float64 leaf copies of the parameters."""
    keys = [k for k, _ in layer.named_parameters()]

    def f(x, *params):
        return functional_call(layer, dict(zip(keys, params, strict=True)), (x,), strict=False)

    return f, tuple(p.detach().clone().requires_grad_() for p in layer.parameters())


def test_registry_holds_the_issue_layers():
    for expected in ("batchnorm", "batchnorm_transductive", "instancenorm", "layernorm", "groupnorm", "tasknorm"):
        assert expected in NAMES
    assert all(issubclass(type(create(n, 4)), NormLayer) for n in NAMES)


def test_unknown_name_lists_close_matches_and_all_names():
    with pytest.raises(UnknownNameError, match=r"did you mean 'batchnorm'.*registered: .*tasknorm"):
        create("batchnrom", C)


def test_unknown_option_raises_listing_accepted_options(name):
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'no_such_option'; accepted options: eps, momentum"):
        create(name, C, no_such_option=1)


def test_extra_repr_lists_every_hyperparameter(name):
    layer = create(name, C)
    text = repr(layer)
    for key in ("eps=", "momentum=", "affine=", "track_running_stats=", f"policy={layer.policy.value!r}"):
        assert key in text
    for key in layer.hparams:
        assert f"{key}=" in text


def test_rejects_3d_input_and_wrong_channel_count(name, make_x):
    layer = create(name, C)
    with pytest.raises(ValueError, match=r"expected 2D \(N, C\) or 4D \(N, C, H, W\) input \(got 3D input\)"):
        layer(make_x(5, C, 4))
    with pytest.raises(ValueError, match=rf"expected {C} channels in dim 1 \(got input of shape \(5, 3, 2, 2\)\)"):
        layer(make_x(5, 3, 2, 2))


def test_single_sample_batch_statistics_raise_unless_per_sample(name, make_x):
    layer = create(name, C, policy="transductive") if create(name, C).fixed_policy is None else create(name, C)
    x = make_x(1, C, 3, 3)
    if layer.per_sample:
        assert torch.isfinite(layer(x)).all()
    else:
        with pytest.raises(ValueError, match="batch statistics of one sample.*policy='running' in eval mode"):
            layer(x)


@pytest.mark.parametrize("shape", [(5, C, 3, 3), (5, C)], ids=["4d", "2d"])
def test_forward_backward_finite_on_a_one_shot_batch_with_a_dead_channel(name, shape, make_x, make_layer):
    layer = make_layer(name, C)
    x = make_x(*shape)
    x[:, 2] = 0.7  # a dead (zero-variance) channel
    x.requires_grad_()
    y = layer(x)
    assert y.shape == x.shape and torch.isfinite(y).all()
    y.pow(2).sum().backward()
    assert torch.isfinite(x.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in layer.parameters())
    layer.eval()
    assert torch.isfinite(layer(x.detach())).all()


@pytest.mark.parametrize("channels", [1, 3, 6, 20])
def test_default_options_work_for_any_channel_count_and_two_samples(name, channels, make_x):
    layer = create(name, channels)
    for x in (make_x(2, channels, 3, 3), make_x(2, channels)):
        layer.train()
        assert torch.isfinite(layer(x)).all()
        layer.eval()
        assert torch.isfinite(layer(x)).all()


# Under frozen_stats a train-mode "running" forward is the same computation as a "batch" one.
@pytest.mark.parametrize("policy,mode", [("transductive", "train"), ("running", "eval")])
def test_gradcheck_and_gradgradcheck_float64(name, policy, mode, make_x, make_layer):
    layer = make_layer(name, 4, dtype=torch.float64)
    if layer.fixed_policy is None:
        layer.policy = policy
    layer(make_x(6, 4, 2, 2, dtype=torch.float64, seed=3))  # non-trivial running state for eval mode
    layer.train(mode == "train")
    f, params = _as_function(layer)
    x = make_x(3, 4, 2, 2, dtype=torch.float64).requires_grad_()
    torch.manual_seed(0)
    with frozen_stats(layer):  # a pure function of its inputs for the numerical derivatives
        assert torch.autograd.gradcheck(f, (x, *params), fast_mode=True)
        assert torch.autograd.gradgradcheck(f, (x, *params), fast_mode=True)


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_module_call_and_functional_call_agree_including_state_updates(name, mode, make_x, make_layer):
    layer = make_layer(name, C, dtype=torch.float64)
    layer(make_x(5, C, 3, 3, dtype=torch.float64, seed=1))
    layer.train(mode == "train")
    twin = copy.deepcopy(layer)
    params = {k: v.clone() for k, v in twin.named_parameters()}
    buffers = {k: v.clone() for k, v in twin.named_buffers()}
    x = make_x(5, C, 3, 3, dtype=torch.float64)
    expected = layer(x)
    got = functional_call(twin, (params, buffers), (x,), strict=True)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-12)
    for k, v in layer.named_buffers():  # the update lands in the passed dict, exactly as in the module
        torch.testing.assert_close(buffers[k], v, rtol=0, atol=1e-12)


def _maml_meta_grads(net, support, query, *, buffers=None, phases=False):
    """Second-order MAML (one inner SGD step) meta-gradient of the query loss w.r.t. the parameters."""
    (xs, ys), (xq, yq) = support, query
    params = dict(net.named_parameters())

    def loss(p, b, x, y):  # buffers are an argument of the transformed function, never captured
        args = (p, b) if b is not None else p
        return F.cross_entropy(functional_call(net, args, (x,), strict=b is not None), y)

    if phases:
        with collect(net) as support_stats:
            g = grad(loss)(params, buffers, xs, ys)
        adapted = {k: params[k] - 0.4 * g[k] for k in params}
        with collect(net) as support_stats:
            loss(adapted, buffers, xs, ys)  # support statistics of the adapted network
        with using(net, support_stats):
            query_loss = loss(adapted, buffers, xq, yq)
    else:
        g = grad(loss)(params, buffers, xs, ys)
        query_loss = loss({k: params[k] - 0.4 * g[k] for k in params}, buffers, xq, yq)
    return dict(zip(params, torch.autograd.grad(query_loss, list(params.values())), strict=True))


@pytest.mark.parametrize("variant", ["buffers_passed", "support_policy"])
def test_second_order_maml_meta_gradient_is_finite(name, variant, make_x, tiny_net):
    net = tiny_net(create(name, 4, dtype=torch.float64), 4).double()
    support = (make_x(6, 1, 4, 4, dtype=torch.float64), torch.arange(6) % 3)
    query = (make_x(6, 1, 4, 4, dtype=torch.float64, seed=1), torch.arange(6) % 3)
    own = {k: v.clone() for k, v in net.named_buffers()}
    if variant == "buffers_passed":
        passed = {k: v.clone() for k, v in net.named_buffers()}
        meta = _maml_meta_grads(net, support, query, buffers=passed)
        if net[1].track_running_stats:
            assert int(passed["1.num_batches_tracked"]) == 2  # inner + outer forward updated the passed dict
    else:
        if net[1].fixed_policy is None:
            net[1].policy = "support"
        with frozen_stats(net):
            meta = _maml_meta_grads(net, support, query, phases=True)
    assert all(torch.isfinite(g).all() for g in meta.values())
    assert any(g.abs().sum() > 0 for g in meta.values())
    for k, v in net.named_buffers():  # the module's own state never changes
        assert torch.equal(v, own[k])


def test_second_order_maml_under_frozen_stats_vmap_over_tasks_equals_the_loop(name, make_x, tiny_net):
    """Train mode, default policy, buffers captured (legal only under frozen_stats); finite meta-gradients."""
    net = tiny_net(create(name, 4, dtype=torch.float64), 4).double()
    params = dict(net.named_parameters())
    xs, ys = make_x(2, 6, 1, 4, 4, dtype=torch.float64), (torch.arange(6) % 3).repeat(2, 1)
    own = {k: v.clone() for k, v in net.named_buffers()}

    def loss(p, x, y):
        return F.cross_entropy(functional_call(net, p, (x,)), y)

    def task_loss(p, x, y):
        g = grad(loss)(p, x, y)
        return loss({k: p[k] - 0.4 * g[k] for k in p}, x, y)

    leaves = list(params.values())
    with frozen_stats(net):
        batched = torch.autograd.grad(vmap(task_loss, in_dims=(None, 0, 0))(params, xs, ys).sum(), leaves)
        looped = torch.autograd.grad(sum(task_loss(params, xs[i], ys[i]) for i in range(2)), leaves)
    assert all(torch.isfinite(g).all() for g in looped) and any(g.abs().sum() > 0 for g in looped)
    for a, b in zip(batched, looped, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)
    for k, v in net.named_buffers():
        assert torch.equal(v, own[k])


def test_train_forward_updates_state_only_when_tracked(name, make_x, snapshot):
    layer = create(name, C)
    before = snapshot(layer)
    layer(make_x(5, C, 3, 3))
    if layer.track_running_stats:
        assert int(layer.num_batches_tracked) == 1
        changed = [k for k, v in layer.named_buffers() if not torch.equal(v, before[k])]
        assert set(changed) > {"num_batches_tracked"}  # some running state moved too
    else:
        assert layer.num_batches_tracked is None and before == {}


@pytest.mark.parametrize("policy", ["running", "transductive"])
def test_eval_forward_leaves_every_buffer_bitwise_unchanged(name, policy, make_x, snapshot, assert_buffers_equal):
    layer = create(name, C)
    layer(make_x(5, C, 3, 3, seed=1))
    layer(make_x(5, C, 3, 3, seed=2))
    if layer.fixed_policy is None:
        layer.policy = policy
    layer.eval()
    before = snapshot(layer)
    layer(make_x(5, C, 3, 3))
    assert_buffers_equal(layer, before)


def test_frozen_stats_train_forward_leaves_every_buffer_unchanged(name, make_x, snapshot, assert_buffers_equal):
    layer = create(name, C)
    layer(make_x(5, C, 3, 3, seed=1))
    before = snapshot(layer)
    with frozen_stats(layer):
        layer(make_x(5, C, 3, 3))
        layer(make_x(5, C, 3, 3, seed=2))
    assert_buffers_equal(layer, before)
    assert layer.update_stats is True


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_channels_last_input_keeps_its_format_and_values(name, mode, make_x, make_layer):
    """Conv-4 runs channels_last (faster on CPU); a layer that returned NCHW would force a copy at every conv."""
    layer = make_layer(name, C)
    twin = copy.deepcopy(layer)
    x = make_x(6, C, 5, 5)
    (layer.train() if mode == "train" else layer.eval())
    (twin.train() if mode == "train" else twin.eval())
    y = layer(x)
    y_cl = twin(x.contiguous(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, y, rtol=1e-5, atol=1e-5)


def test_state_dict_round_trip_gives_identical_eval_outputs(name, make_x, make_layer):
    layer = make_layer(name, C)
    for seed in range(3):
        layer(make_x(5, C, 3, 3, seed=seed))
    fresh = create(name, C)
    fresh.load_state_dict(layer.state_dict())
    layer.eval()
    fresh.eval()
    x = make_x(5, C, 3, 3, seed=7)
    assert torch.equal(fresh(x), layer(x))


@pytest.mark.parametrize("mode", ["train", "eval"])
@pytest.mark.parametrize("name", SUPPORT_CAPABLE)
def test_support_policy_query_outputs_do_not_depend_on_other_queries(name, mode, make_x, make_layer):
    layer = make_layer(name, C, policy="support", dtype=torch.float64).train(mode == "train")
    support, query = make_x(5, C, 3, 3, dtype=torch.float64), make_x(6, C, 3, 3, dtype=torch.float64, seed=1)
    with collect(layer) as support_stats:
        layer(support)
    with using(layer, support_stats):  # query forwards never update state, even in train mode
        whole = layer(query)
        one_by_one = torch.cat([layer(query[i : i + 1]) for i in range(6)])
        reversed_halves = torch.cat([layer(query[3:]), layer(query[:3])])
    torch.testing.assert_close(one_by_one, whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(reversed_halves, torch.cat([whole[3:], whole[:3]]), rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", PER_SAMPLE)
def test_per_sample_layers_ignore_batch_composition(name, make_x, make_layer):
    layer = make_layer(name, C, dtype=torch.float64)
    x, other = make_x(4, C, 3, 3, dtype=torch.float64), make_x(3, C, 3, 3, dtype=torch.float64, seed=5)
    whole = layer(x)
    for i in range(4):
        torch.testing.assert_close(layer(x[i : i + 1]), whole[i : i + 1], rtol=0, atol=1e-12)
        mixed = layer(torch.cat([other, x[i : i + 1]]))
        torch.testing.assert_close(mixed[-1:], whole[i : i + 1], rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", SUPPORT_CAPABLE)
def test_support_policy_errors_without_collected_or_given_support_statistics(name, make_x):
    layer = create(name, C, policy="support")
    with pytest.raises(RuntimeError, match="policy='support' but got a forward with no support statistics"):
        layer(make_x(5, C, 3, 3))
    with using(layer, {}), pytest.raises(RuntimeError, match="statistics given to `using` hold none for it"):
        layer(make_x(5, C, 3, 3))


GROUPED = ["groupnorm", "groupwhiten", "dbn", "iternorm", "swbn"]


@pytest.mark.parametrize("name", GROUPED)
def test_every_grouped_layer_takes_groups_and_group_size_converted_exactly(name):
    by_groups, by_size = create(name, 32, groups=4), create(name, 32, group_size=8)
    assert (by_groups.groups, by_groups.group_size) == (by_size.groups, by_size.group_size) == (4, 8)
    assert (create(name, 32, groups=4, group_size=8).groups, create(name, 32, groups=4, group_size=8).group_size) == (
        4,
        8,
    )
    with pytest.raises(ValueError, match=r"groups=4 and group_size=4 disagree for num_features=32"):
        create(name, 32, groups=4, group_size=4)
    other = "group_size" if name in ("groupnorm", "groupwhiten") else "groups"
    with pytest.raises(ValueError, match=rf"{other}=5 does not divide num_features=32"):
        create(name, 32, **{other: 5})
