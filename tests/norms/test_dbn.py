"""Tests of Decorrelated Batch Normalization (``dbn``): the invariants of norms-spec §4.5."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fewshot.norms import create, frozen_stats

F64 = torch.float64


def _correlated(m: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.eye(d, dtype=F64) + 0.4 * torch.randn(d, d, generator=g, dtype=F64)
    return torch.randn(m, d, generator=g, dtype=F64) @ mix + 3.0


def test_training_output_covariance_is_identity():
    layer = create("dbn", 16, group_size=8, eps=1e-10, dtype=F64)
    y = layer(_correlated(300, 16))
    yc = (y - y.mean(0)).reshape(300, 2, 8)
    cov = torch.einsum("ngi,ngj->gij", yc, yc) / 300
    torch.testing.assert_close(cov, torch.eye(8, dtype=F64).expand(2, 8, 8), rtol=0, atol=1e-4)


def test_whitening_matrix_is_symmetric_and_commutes_with_the_covariance():
    x = _correlated(100, 6, seed=1)
    layer = create("dbn", 6, group_size=6, dtype=F64)
    w = layer._batch_stats(x).matrix[0]
    xc = x - x.mean(0)
    sigma = xc.T @ xc / 100 + layer.eps * torch.eye(6, dtype=F64)
    torch.testing.assert_close(w, w.T, rtol=0, atol=1e-12)
    torch.testing.assert_close(w @ sigma, sigma @ w, rtol=0, atol=1e-10)
    torch.testing.assert_close(w @ sigma @ w, torch.eye(6, dtype=F64), rtol=0, atol=1e-10)


def test_group_size_one_is_batchnorm(make_x, randomize_affine):
    x = make_x(6, 8, 3, 3, dtype=F64)
    bn = randomize_affine(nn.BatchNorm2d(8, dtype=F64))
    layer = create("dbn", 8, group_size=1, dtype=F64)
    layer.load_state_dict({**layer.state_dict(), "weight": bn.weight.detach(), "bias": bn.bias.detach()})
    torch.testing.assert_close(layer(x), bn(x), rtol=0, atol=1e-12)


def test_gradients_are_exact_with_two_dead_channels_in_one_group(make_x):
    # Two constant channels give the eigenvalue eps twice: eigh's own backward is NaN there, ours is exact.
    layer = create("dbn", 4, group_size=4, eps=1e-3, dtype=F64)
    params = {k: v.detach().clone() for k, v in layer.named_parameters()}
    x = make_x(5, 4, 2, 2, dtype=F64)
    x[:, 1] = 0.3
    x[:, 3] = -1.2
    x.requires_grad_()
    with frozen_stats(layer):
        assert torch.autograd.gradcheck(lambda inp: functional_call(layer, params, (inp,)), (x,))


def test_eval_uses_the_running_whitening_matrix(make_x):
    layer = create("dbn", 8, group_size=4, momentum=1.0, dtype=F64)
    x = make_x(10, 8, dtype=F64)
    train_out = layer(x)
    layer.eval()
    torch.testing.assert_close(layer(x), train_out, rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.running_mean, x.mean(0), rtol=0, atol=1e-14)


def test_defaults_and_bad_group_size():
    assert create("dbn", 64).group_size == 16
    assert create("dbn", 10).group_size == 10
    with pytest.raises(ValueError, match=r"group_size=6 does not divide num_features=16"):
        create("dbn", 16, group_size=6)
