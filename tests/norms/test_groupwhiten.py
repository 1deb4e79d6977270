"""Tests of Group Whitening (``groupwhiten``): the invariants of norms-spec §6.5."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fewshot.norms import create

F64 = torch.float64


def test_a_sample_output_does_not_depend_on_the_rest_of_the_batch(make_x, make_layer):
    layer = make_layer("groupwhiten", 16, groups=4, dtype=F64)
    x = make_x(5, 16, 3, 3, dtype=F64)
    whole = layer(x)
    perm = torch.tensor([3, 0, 4, 1, 2])
    torch.testing.assert_close(layer(x[perm]), whole[perm], rtol=0, atol=1e-12)
    torch.testing.assert_close(layer(x[2:3]), whole[2:3], rtol=0, atol=1e-12)


@pytest.mark.parametrize("shape", [(4, 6, 3, 3), (4, 6)])
def test_one_group_is_layernorm_with_a_per_channel_affine(shape, make_x, make_layer):
    layer = make_layer("groupwhiten", 6, groups=1, eps=1e-5, dtype=F64)
    x = make_x(*shape, dtype=F64)
    expected = F.layer_norm(x, x.shape[1:], eps=1e-5)
    view = (1, -1, *([1] * (x.dim() - 2)))
    expected = expected * layer.weight.view(view) + layer.bias.view(view)
    torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)


def test_each_sample_is_white_across_groups_with_enough_iterations(make_x):
    layer = create("groupwhiten", 16, groups=4, T=10, eps=1e-12, dtype=F64)
    x = make_x(3, 16, 4, 4, dtype=F64)
    x = x + 0.8 * x[:, :4].repeat(1, 4, 1, 1)  # correlate the groups
    rows = layer(x).reshape(3, 4, -1)
    rows = rows - rows.mean(2, keepdim=True)
    cov = rows @ rows.mT / rows.shape[2]
    torch.testing.assert_close(cov, torch.eye(4, dtype=F64).expand(3, 4, 4), rtol=0, atol=1e-6)


def test_train_and_eval_agree_and_no_state_is_kept(make_x):
    layer = create("groupwhiten", 8, groups=2)
    x = make_x(4, 8, 3, 3)
    train_out = layer(x)
    layer.eval()
    assert torch.equal(layer(x), train_out)
    assert not layer.track_running_stats and list(layer.buffers()) == []


def test_defaults_and_bad_groups():
    assert (create("groupwhiten", 128).groups, create("groupwhiten", 128).T) == (64, 5)
    assert create("groupwhiten", 20).groups == 20
    with pytest.raises(ValueError, match=r"groups=3 does not divide num_features=8"):
        create("groupwhiten", 8, groups=3)


def test_grad_inside_vmap_on_channels_last_samples_equals_the_loop():
    # MAML's vmap_tasks on a channels_last model: grad wraps the batched tensor, which answers the memory-format
    # query but refuses the conversion ("NYI: Tensor.clone(memory_format) inside vmap")
    layer = create("groupwhiten", 16).double()
    x = torch.randn(3, 8, 4, 4, 16, dtype=F64, generator=torch.Generator().manual_seed(0)).permute(0, 1, 4, 2, 3)
    assert x[0].is_contiguous(memory_format=torch.channels_last) and not x[0].is_contiguous()
    scale = torch.arange(16, dtype=F64).reshape(16, 1, 1)

    def loss(sample):
        return (layer(sample).square() * scale).sum()

    loop = torch.stack([torch.func.grad(loss)(sample) for sample in x])
    torch.testing.assert_close(torch.func.vmap(torch.func.grad(loss))(x), loop, rtol=0, atol=1e-12)
    assert layer(x[0]).is_contiguous(memory_format=torch.channels_last)  # outside vmap the format is kept
