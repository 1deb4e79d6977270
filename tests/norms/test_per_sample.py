"""``instancenorm``, ``layernorm`` and ``groupnorm`` against torch's functional norms; the group rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot.norms import create
from fewshot.norms.per_sample import resolve_groups


def _per_channel_affine(y, layer):
    shape = (1, -1, *([1] * (y.dim() - 2)))
    return y * layer.weight.reshape(shape) + layer.bias.reshape(shape)


@pytest.mark.parametrize("shape", [(3, 6, 4, 4), (1, 6, 2, 3)])
def test_instancenorm_equals_f_instance_norm(shape, make_x, make_layer):
    layer = make_layer("instancenorm", 6, dtype=torch.float64)
    x = make_x(*shape, dtype=torch.float64)
    expected = F.instance_norm(x, weight=layer.weight, bias=layer.bias, eps=layer.eps)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_instancenorm_on_vectors_returns_the_bias(make_x, make_layer):
    layer = make_layer("instancenorm", 6, dtype=torch.float64)
    torch.testing.assert_close(layer(make_x(3, 6, dtype=torch.float64)), layer.bias.expand(3, 6).detach())


@pytest.mark.parametrize("shape", [(3, 6, 4, 4), (2, 6)])
def test_layernorm_equals_f_layer_norm_with_per_channel_affine(shape, make_x, make_layer):
    layer = make_layer("layernorm", 6, dtype=torch.float64)
    x = make_x(*shape, dtype=torch.float64)
    expected = _per_channel_affine(F.layer_norm(x, x.shape[1:], eps=layer.eps), layer)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("groups", [1, 2, 3, 6])
@pytest.mark.parametrize("shape", [(3, 6, 4, 4), (2, 6)])
def test_groupnorm_equals_f_group_norm(groups, shape, make_x, make_layer):
    layer = make_layer("groupnorm", 6, groups=groups, dtype=torch.float64)
    assert layer.groups == groups
    x = make_x(*shape, dtype=torch.float64)
    expected = F.group_norm(x, groups, layer.weight, layer.bias, layer.eps)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize(
    "num_features,requested,used",
    [
        (64, 32, 32),
        (48, 32, 24),
        (8, 32, 8),
        (25, 32, 25),
        (50, 32, 25),
        (7, 32, 7),
        (30, 4, 3),
        (1, 32, 1),
        (64, 1, 1),
    ],
)
def test_group_count_is_the_largest_divisor_not_above_the_request(num_features, requested, used):
    assert resolve_groups(num_features, requested) == used
    assert create("groupnorm", num_features, groups=requested).groups == used


@pytest.mark.parametrize("bad", [0, -2, 2.5, True])
def test_groupnorm_rejects_invalid_group_counts(bad):
    with pytest.raises(ValueError, match="groups must be a positive int"):
        create("groupnorm", 8, groups=bad)


def test_per_sample_layers_have_no_running_state_and_flag_it():
    for name in ("instancenorm", "layernorm", "groupnorm"):
        layer = create(name, 8)
        assert layer.per_sample and not layer.reproduces_bn_after_convert
        assert not layer.track_running_stats and list(layer.buffers()) == []
        assert set(layer.state_dict()) == {"weight", "bias"}


def test_per_sample_layers_ignore_the_policy(make_x):
    x = make_x(4, 8, 3, 3)
    for name in ("instancenorm", "layernorm", "groupnorm"):
        outputs = [create(name, 8, policy=p)(x) for p in ("running", "transductive", "support")]  # no task_phase needed
        assert torch.equal(outputs[0], outputs[1]) and torch.equal(outputs[0], outputs[2])
