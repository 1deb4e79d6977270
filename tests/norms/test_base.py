"""``NormLayer`` itself: constructor validation, the hook contract for new layers, policy/phase plumbing."""

from __future__ import annotations

import pytest
import torch

from fewshot.norms import NormLayer, collect, create, using
from fewshot.norms import functional as FN


class CenterOnly(NormLayer):
    """A minimal layer written by the module docstring's recipe: subtracts a per-channel mean, no scaling."""

    state_buffers = ("running_mean",)
    hparams = ("shift",)

    def _init_layer(self, factory_kwargs, *, shift: float = 0.0) -> None:
        self.shift = shift

    def _make_state(self, factory_kwargs):
        return {"running_mean": torch.zeros(self.num_features, **factory_kwargs)}

    def _batch_stats(self, x):
        return (FN.batch_moments(x).mean,)

    def _running_stats(self, state):
        return (state["running_mean"],)

    def _normalize(self, x, stats):
        return x - FN.per_channel(stats[0], x) + self.shift

    def _next_state(self, state, stats, factor):
        return {"running_mean": FN.ema(state["running_mean"], stats[0], factor)}

    def _load_running_moments(self, mean, var):
        self.running_mean.copy_(mean)


def test_a_new_layer_needs_only_the_hooks(make_x):
    layer = CenterOnly(3, shift=1.0, affine=False, momentum=None)
    assert repr(layer) == (
        "CenterOnly(3, eps=1e-05, momentum=None, affine=False, track_running_stats=True, policy='running', shift=1.0)"
    )
    xs = [make_x(4, 3, 2, 2, seed=s) for s in range(3)]
    for x in xs:
        y = layer(x)
    torch.testing.assert_close(y.mean(dim=(0, 2, 3)), torch.ones(3), rtol=0, atol=1e-6)
    expected = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs]).mean(0)
    torch.testing.assert_close(layer.running_mean, expected, rtol=0, atol=1e-6)  # cumulative average
    assert int(layer.num_batches_tracked) == 3
    layer.eval()
    x = make_x(4, 3, 2, 2, seed=9)
    torch.testing.assert_close(layer(x), x - expected[None, :, None, None] + 1.0, rtol=0, atol=1e-6)
    assert set(layer.state_dict()) == {"running_mean", "num_batches_tracked"}
    layer.reset_running_stats()
    assert torch.equal(layer.running_mean, torch.zeros(3)) and int(layer.num_batches_tracked) == 0


def test_without_tracking_state_buffers_are_registered_as_none():
    layer = CenterOnly(3, track_running_stats=False)
    assert layer.running_mean is None and layer.num_batches_tracked is None
    assert set(layer.state_dict()) == {"weight", "bias"}
    layer.running_mean = torch.ones(3)  # a registered (None) buffer slot: assigning a tensor makes it a buffer
    assert "running_mean" in layer.state_dict()


def test_state_buffers_must_match_make_state():
    class Broken(CenterOnly):
        state_buffers = ("running_mean", "running_var")

    with pytest.raises(TypeError, match=r"_make_state returned buffers \['running_mean'\] but state_buffers"):
        Broken(3)


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"num_features": 0}, "num_features must be a positive int"),
        ({"num_features": 4.0}, "num_features must be a positive int"),
        ({"num_features": True}, "num_features must be a positive int"),
        ({"eps": -1.0}, "eps must be a finite number >= 0"),
        ({"eps": float("nan")}, "eps must be a finite number >= 0"),
        ({"momentum": 1.5}, r"momentum must be in \[0, 1\] or None"),
        ({"policy": "batch"}, "policy must be one of 'running', 'support', 'transductive', got 'batch'"),
    ],
)
def test_constructor_validates_common_options(kwargs, message):
    kwargs = {"num_features": 4, **kwargs}
    with pytest.raises(ValueError, match=message):
        create("batchnorm", kwargs.pop("num_features"), **kwargs)


def test_layer_options_lists_keyword_options():
    assert CenterOnly.layer_options() == ("shift",)
    assert create("groupnorm", 8).layer_options() == ("groups", "group_size")
    with pytest.raises(TypeError, match=r"CenterOnly got unknown option\(s\) 'groups'.*policy, device, dtype, shift"):
        CenterOnly(3, groups=2)


def test_device_and_dtype_reach_parameters_and_buffers():
    layer = create("batchnorm", 3, dtype=torch.float64, device="cpu")
    assert layer.weight.dtype == layer.running_var.dtype == torch.float64
    assert layer.num_batches_tracked.dtype == torch.long


def test_support_cache_keeps_the_graph_so_query_gradients_reach_the_support(make_x):
    layer = create("batchnorm", 3, policy="support", dtype=torch.float64)
    support = make_x(4, 3, 2, 2, dtype=torch.float64).requires_grad_()
    with collect(layer) as support_stats:
        layer(support)
    with using(layer, support_stats):
        layer(make_x(2, 3, 2, 2, dtype=torch.float64, seed=1)).pow(3).sum().backward()
    assert support.grad is not None and support.grad.abs().sum() > 0
