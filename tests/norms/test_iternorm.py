"""Tests of Iterative Normalization (``iternorm``): the invariants of norms-spec §3.6."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.norms import create
from fewshot.norms import whitening_math as WM

F64 = torch.float64


def _exactly_isotropic(m: int, d: int, seed: int = 0) -> torch.Tensor:
    """``(m, d)`` data whose batch covariance is exactly ``I`` (centred orthonormal columns times sqrt(m))."""
    z = torch.randn(m, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    q, _ = torch.linalg.qr(z - z.mean(0))
    return q * m**0.5


def test_group_size_one_is_batchnorm_for_any_t(make_x, randomize_affine):
    x = make_x(6, 8, 3, 3, dtype=F64)
    bn = randomize_affine(nn.BatchNorm2d(8, dtype=F64))
    for t in (0, 1, 5):
        layer = create("iternorm", 8, group_size=1, T=t, dtype=F64)
        layer.load_state_dict({**layer.state_dict(), "weight": bn.weight.detach(), "bias": bn.bias.detach()})
        torch.testing.assert_close(layer(x), bn(x), rtol=0, atol=1e-12)


def test_batch_whitening_matrix_obeys_the_spectral_identity(make_x):
    layer = create("iternorm", 8, group_size=8, T=5, eps=1e-5, dtype=F64)
    x = make_x(40, 8, dtype=F64) @ torch.randn(8, 8, generator=torch.Generator().manual_seed(2), dtype=F64)
    w = layer._batch_stats(x).matrix[0]
    xc = x - x.mean(0)
    sigma = xc.T @ xc / 40 + 1e-5 * torch.eye(8, dtype=F64)
    evals, evecs = torch.linalg.eigh(sigma)
    trace = evals.sum()
    expected = evecs @ torch.diag(WM.newton_schulz_scalar(evals / trace, 5)) @ evecs.T / trace.sqrt()
    torch.testing.assert_close(w, expected, rtol=0, atol=1e-5)


def test_isotropic_64_channels_with_t5_under_whiten_to_variance_0586():
    layer = create("iternorm", 64, T=5, dtype=F64)
    assert layer.group_size == 64
    y = layer(_exactly_isotropic(256, 64))
    var = y.var(0, unbiased=False)
    torch.testing.assert_close(var, torch.full((64,), 0.586, dtype=F64), rtol=0, atol=0.01)
    assert var.max() < 0.6  # deliberately not white


def test_more_iterations_whiten_well_conditioned_data(make_x):
    x = make_x(200, 4, dtype=F64) @ torch.tensor(
        [[1.0, 0.3, 0, 0], [0, 1.0, 0.2, 0], [0, 0, 1.0, 0.1], [0, 0, 0, 1.0]], dtype=F64
    )
    y = create("iternorm", 4, T=12, eps=1e-12, dtype=F64)(x)
    yc = y - y.mean(0)
    torch.testing.assert_close(yc.T @ yc / 200, torch.eye(4, dtype=F64), rtol=0, atol=1e-8)


@pytest.mark.parametrize("shape", [(6, 8, 3, 3), (9, 8)])
def test_eval_with_momentum_one_after_one_batch_reproduces_the_training_output(shape, make_x, randomize_affine):
    layer = randomize_affine(create("iternorm", 8, group_size=4, momentum=1.0, dtype=F64))
    x = make_x(*shape, dtype=F64)
    train_out = layer(x)
    layer.eval()
    torch.testing.assert_close(layer(x), train_out, rtol=0, atol=1e-12)


def test_channels_last_input_gives_the_same_values_and_keeps_its_format(make_x):
    layer = create("iternorm", 16, group_size=8)
    x = make_x(5, 16, 4, 4)
    y_cl = layer(x.contiguous(memory_format=torch.channels_last))
    assert y_cl.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y_cl, layer(x), rtol=1e-5, atol=1e-5)


def test_defaults_and_group_fallback():
    assert (create("iternorm", 64).group_size, create("iternorm", 64).T) == (64, 5)
    assert create("iternorm", 32).group_size == 32
    assert create("iternorm", 160).group_size == 40
    assert create("iternorm", 32, group_size=8).running_wm.shape == (4, 8, 8)


@pytest.mark.parametrize(
    "kwargs,match",
    [({"T": -1}, r"T \(Newton iterations\) must be an int >= 0, got -1"), ({"group_size": 3}, "does not divide")],
)
def test_bad_options_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        create("iternorm", 8, **kwargs)
