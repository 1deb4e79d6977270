"""Fused kernels beside the exact path (fewshot.norms.kernels): where each runs, and that they agree.

Every check compares a forward with the automatic choice against the same forward inside
``primitive_kernels()`` (the exact path): outputs, gradients (input, weight, bias) and the state after the
forward, per policy and mode.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.func import grad, vmap

import fewshot.norms as norms
from fewshot.norms.batchnorm import BatchNorm
from fewshot.norms.kernels import fused_kernels_allowed, primitive_kernels
from fewshot.norms.swbn import SWBN


def test_fused_kernels_are_allowed_in_plain_autograd_and_first_order_grad_only():
    seen = {}

    def probe(name):
        def f(t):
            seen[name] = fused_kernels_allowed(2 * t, None)
            return t.sum()

        return f

    live = torch.ones(2, requires_grad=True)
    assert fused_kernels_allowed(live, None) and fused_kernels_allowed()
    grad(probe("grad"))(torch.ones(2))
    grad(probe("grad at live parameters"))(live)  # second-order MAML: backward() will differentiate the gradient
    with torch.no_grad():
        grad(probe("grad at live parameters under no_grad"))(live)
    grad(grad(lambda t: probe("grad of grad")(t) * t.sum()))(torch.ones(()))
    vmap(probe("vmap"))(torch.ones(3, 2))
    vmap(grad(probe("vmap of grad")))(torch.ones(3, 2))
    assert seen == {
        "grad": True,
        "grad at live parameters": False,
        "grad at live parameters under no_grad": True,
        "grad of grad": False,
        "vmap": False,
        "vmap of grad": False,
    }
    with primitive_kernels():
        with primitive_kernels():
            assert not fused_kernels_allowed()
        assert not fused_kernels_allowed()
    assert fused_kernels_allowed()


def _run(layer, xs, phases):
    """Forward each ``x`` of ``xs`` (in task phase ``phases[i]`` or none); returns outputs, grads and state."""
    layer.zero_grad()
    inputs = [x.clone().requires_grad_() for x in xs]
    outs, support = [], {}
    for x, phase in zip(inputs, phases, strict=True):
        if phase == "support":
            with norms.collect(layer) as support:
                outs.append(layer(x))
        elif phase == "query":
            with norms.using(layer, support):
                outs.append(layer(x))
        else:
            outs.append(layer(x))
    g = torch.Generator().manual_seed(7)
    loss = sum((o * torch.randn(o.shape, generator=g, dtype=o.dtype)).sum() for o in outs)
    loss.backward()
    params = [p.grad.clone() for p in (layer.weight, layer.bias) if p is not None]
    return outs, [x.grad for x in inputs], params, {k: v.clone() for k, v in layer.named_buffers()}


CASES = [
    # (layer, policy, training, phases, fused forwards expected)
    ("batchnorm", "running", True, (None, None), 2),
    ("batchnorm", "running", False, (None,), 0),
    ("batchnorm", "transductive", True, (None,), 1),
    ("batchnorm", "transductive", False, (None,), 1),
    ("batchnorm", "support", True, ("support", "query"), 0),
    ("batchnorm", "support", False, ("support", "query"), 0),
    ("batchnorm_transductive", "transductive", True, (None,), 1),
    ("swbn", "running", True, (None, None), 2),
    ("swbn", "running", False, (None,), 0),
    ("swbn", "transductive", True, (None,), 1),
    ("swbn", "transductive", False, (None,), 1),
    ("swbn", "support", True, ("support", "query"), 0),
]


@pytest.mark.parametrize("momentum", [0.1, None], ids=["ema", "cumulative"])
@pytest.mark.parametrize(
    ("dtype", "channels_last", "tol"),
    [(torch.float64, False, 1e-10), (torch.float32, True, 2e-5)],
    ids=["float64", "float32-channels_last"],
)
@pytest.mark.parametrize(("name", "policy", "training", "phases", "n_fused"), CASES)
def test_fused_and_exact_paths_give_equal_outputs_gradients_and_state(
    name, policy, training, phases, n_fused, dtype, channels_last, tol, momentum, make_layer, make_x, fused_calls
):
    kwargs = {} if name == "batchnorm_transductive" else {"policy": policy, "momentum": momentum}
    if name == "swbn":  # two groups, a fast rate, and a W away from I, so the update and the whitening show
        kwargs.update(group_size=3, alpha=0.05)
    layer = make_layer(name, 6, **kwargs).to(dtype).train(training)
    with torch.no_grad():  # non-trivial running state, so that eval reads something
        for key in ("running_mean", "running_var"):
            if getattr(layer, key, None) is not None:
                getattr(layer, key).uniform_(0.5, 1.5)
        if name == "swbn":
            layer.whitening_matrix.add_(0.1 * torch.randn(layer.whitening_matrix.shape, dtype=dtype)).copy_(
                0.5 * (layer.whitening_matrix + layer.whitening_matrix.mT)
            )
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    xs = [make_x(7, 6, 5, 4, dtype=dtype, seed=s).contiguous(memory_format=fmt) for s in range(len(phases))]
    twin = copy.deepcopy(layer)
    fused = _run(layer, xs, phases)
    assert len(fused_calls) == n_fused
    with primitive_kernels():
        exact = _run(twin, xs, phases)
    assert len(fused_calls) == n_fused
    for got, want in zip(fused[0] + fused[1] + fused[2], exact[0] + exact[1] + exact[2], strict=True):
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
    assert fused[3].keys() == exact[3].keys()
    for key in fused[3]:
        torch.testing.assert_close(fused[3][key], exact[3][key], rtol=tol, atol=tol, msg=key)
    assert all(out.is_contiguous(memory_format=fmt) for out in fused[0])


@pytest.mark.parametrize("name", ["batchnorm", "swbn"])
def test_fused_path_has_exact_second_derivatives(name, make_layer, make_x, fused_calls):
    layer = make_layer(name, 3).double()
    x = make_x(4, 3, 2, 2, dtype=torch.float64).requires_grad_()
    params = (x, layer.weight, layer.bias)
    with norms.frozen_stats(layer):  # every evaluation of the function sees the same state
        assert torch.autograd.gradgradcheck(lambda *_: layer(x), params)
    assert fused_calls


@pytest.mark.parametrize("name", ["batchnorm", "swbn"])
def test_fused_path_raises_the_layers_own_error_for_one_sample(name, make_layer, make_x):
    layer = make_layer(name, 3)
    with pytest.raises(ValueError, match="batch of 1 sample"):
        layer(make_x(1, 3))


@pytest.mark.parametrize("norm", [BatchNorm, SWBN])
def test_second_order_meta_gradient_takes_the_exact_path_inside_torch_func_grad(norm, tiny_net, make_x, fused_calls):
    """Second-order MAML's inner gradients run on the exact path; only the last, plain-autograd loss is fused."""
    layer = norm(5, policy="transductive")
    if norm is SWBN:
        with torch.no_grad():
            layer.whitening_matrix.add_(0.05 * (torch.ones(5, 5) + torch.eye(5)))
    net = tiny_net(layer, 5).double()
    params = dict(net.named_parameters())
    x, y = make_x(6, 1, 5, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])

    def loss(p):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(net, p, (x,)), y)

    def meta_gradient():
        g = grad(loss)(params)
        adapted = {k: params[k] - 0.5 * g[k] for k in params}
        g = grad(loss)(adapted)  # two inner steps
        adapted = {k: adapted[k] - 0.5 * g[k] for k in adapted}
        return torch.autograd.grad(loss(adapted), list(params.values()))

    with norms.frozen_stats(net):  # as MAML runs its differentiable passes
        fused = meta_gradient()
        assert [call.under_grad for call in fused_calls] == [False]  # the outer loss only
        with primitive_kernels():
            exact = meta_gradient()
    for got, want in zip(fused, exact, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("norm", [BatchNorm, SWBN])
def test_first_order_inner_gradient_takes_the_fused_path_and_equals_the_exact_one(norm, tiny_net, make_x, fused_calls):
    layer = norm(5, policy="transductive")
    net = tiny_net(layer, 5).double()
    params = {k: v.detach() for k, v in net.named_parameters()}  # first order: detached parameters
    x, y = make_x(6, 1, 5, 5, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2])

    def loss(p):
        return torch.nn.functional.cross_entropy(torch.func.functional_call(net, p, (x,)), y)

    with norms.frozen_stats(net):
        fused = grad(loss)(params)
        assert [call.under_grad for call in fused_calls] == [True]
        with primitive_kernels():
            exact = grad(loss)(params)
    for key in fused:
        torch.testing.assert_close(fused[key], exact[key], rtol=1e-10, atol=1e-12, msg=key)


def test_vmap_takes_the_exact_path_and_matches_a_loop(make_layer, make_x, fused_calls):
    layer = make_layer("batchnorm", 4, policy="transductive", track_running_stats=False)
    xs = torch.stack([make_x(5, 4, 3, 3, seed=s) for s in range(3)])
    batched = vmap(layer)(xs)
    assert not fused_calls
    looped = torch.stack([layer(x) for x in xs])
    assert len(fused_calls) == 3
    torch.testing.assert_close(batched, looped, rtol=1e-5, atol=1e-5)
