"""Non-finite values never poison normalization state; SWBN's W stays finite and bounded on rank-deficient input.

Every stateful layer writes its state in one place (``NormLayer.commit``): a NaN or infinity in the batch
statistics, or in the state an update would produce, skips that update, keeps the previous state bit for bit and
warns once per layer, naming it.
"""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from fewshot.norms import NORM_LAYERS, create
from fewshot.norms import whitening_math as WM
from fewshot.norms.kalmannorm import Moments
from fewshot.norms.kernels import primitive_kernels

STATEFUL = [n for n in NORM_LAYERS.names() if create(n, 8).track_running_stats]


def _state(layer):
    return {k: getattr(layer, k).clone() for k in (*layer.state_buffers, "num_batches_tracked")}


def _forward(layer, x, name):
    if name == "kalmannorm":  # also thread a prior, as backbones do
        return layer.forward_with_state(x, Moments(torch.zeros(8), torch.ones(8)))[0]
    return layer(x)


def _update_with_nan_stats(layer, x, name):
    """``update`` then ``commit`` with statistics of ``x`` in which one value of the mean is NaN."""
    with torch.no_grad():
        stats = layer.stats(x)
        poisoned = stats._replace(mean=stats.mean.clone())
        poisoned.mean.view(-1)[1] = math.nan
        layer.commit(layer.update(layer.state(), poisoned), poisoned)


def test_every_stateful_layer_is_covered():
    assert set(STATEFUL) == {"batchnorm", "dbn", "iternorm", "kalmannorm", "swbn"}


@pytest.mark.parametrize("name", STATEFUL)
@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_a_non_finite_batch_skips_the_update_and_warns_once_naming_the_layer(name, bad):
    torch.manual_seed(0)
    kwargs = {"group_size": 4} if name in ("swbn", "dbn", "iternorm") else {}
    layer = create(name, 8, **kwargs).train()
    layer.label = "backbone.block2.norm"
    _forward(layer, torch.randn(6, 8, 3, 3), name)  # a normal update first: state away from its initial value
    before = _state(layer)
    poisoned = torch.randn(6, 8, 3, 3)
    poisoned[2, 5, 1, 1] = bad

    def poison():
        _forward(layer, poisoned, name)  # DBN: the group's whitening falls back to I, the update is skipped

    with pytest.warns(RuntimeWarning, match=r"normalization layer 'backbone.block2.norm' .*NaN or infinity") as rec:
        poison()
    assert len(rec) == 1
    for key, value in before.items():
        assert torch.equal(getattr(layer, key), value), key  # state unchanged, bit for bit
    assert layer.skipped_updates == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the second skip is counted, not reported again
        poison()
    assert layer.skipped_updates == 2
    _forward(layer, torch.randn(6, 8, 3, 3), name)  # a finite batch updates the state again
    assert int(layer.num_batches_tracked) == int(before["num_batches_tracked"]) + 1
    assert all(bool(torch.isfinite(getattr(layer, k)).all()) for k in layer.state_buffers)
    assert any(not torch.equal(getattr(layer, k), before[k]) for k in layer.state_buffers)


@pytest.mark.parametrize("name", STATEFUL)
def test_the_update_step_itself_refuses_nan_statistics(name):
    torch.manual_seed(0)
    layer = create(name, 8, **({"group_size": 4} if name in ("swbn", "dbn", "iternorm") else {})).train()
    _forward(layer, torch.randn(6, 8, 3, 3), name)
    before = _state(layer)
    with pytest.warns(RuntimeWarning, match=r"in its batch statistics; this state update was skipped"):
        _update_with_nan_stats(layer, torch.randn(6, 8, 3, 3), name)
    for key, value in before.items():
        assert torch.equal(getattr(layer, key), value), key


def test_an_update_producing_non_finite_state_is_rolled_back():
    """Finite statistics, but a whitening rate so large that W overflows: the previous state is restored."""
    torch.manual_seed(0)
    with pytest.warns(UserWarning, match="stability bound"):
        layer = create("swbn", 4, group_size=4, alpha=3e38).train()
    before = _state(layer)
    x = torch.randn(32, 1).repeat(1, 4) + 0.01 * torch.randn(32, 4)  # strongly correlated channels
    with pytest.warns(RuntimeWarning, match=r"SWBN\(4\): NaN or infinity in the state it would produce"):
        layer(x)
    for key, value in before.items():
        assert torch.equal(getattr(layer, key), value), key


def test_state_updates_stay_exact_and_legal_in_the_maml_state_update_pass():
    """The guard does not change finite updates: batchnorm's running moments equal the EMA formula exactly."""
    torch.manual_seed(0)
    layer = create("batchnorm", 8, momentum=0.1).train()
    x = torch.randn(10, 8, 4, 4)
    with torch.no_grad():
        layer(x)
    mean = x.mean(dim=(0, 2, 3))
    var = x.var(dim=(0, 2, 3), unbiased=True)
    torch.testing.assert_close(layer.running_mean, 0.1 * mean, rtol=0, atol=1e-7)
    torch.testing.assert_close(layer.running_var, 0.9 + 0.1 * var, rtol=0, atol=1e-6)


def _rank_deficient(n: int) -> torch.Tensor:
    """(n, 4) input whose channels span 2 dimensions: channel 2 = channel 0, channel 3 = channel 1."""
    a = torch.randn(n, 2)
    return torch.cat([a, a], dim=1)


def test_swbn_w_stays_finite_and_bounded_on_a_rank_deficient_stream():
    """With the default shrinkage 0, W grows like (1 + alpha)^t along the null directions of every batch.

    The uncapped rule overflows to infinity; SWBN caps W's eigenvalues at 1/sqrt(eps), the largest eigenvalue of
    the exact whitening matrix of R + eps*I, and its output stays finite.
    """
    torch.manual_seed(0)
    alpha, steps = 0.1, 1200  # (1 + alpha)^t passes float32's 3.4e38 after ~930 steps
    layer = create("swbn", 4, group_size=4, alpha=alpha).train()
    cap = layer.eps**-0.5
    uncapped = torch.eye(4).unsqueeze(0)
    for _ in range(steps):
        x = _rank_deficient(16)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no update is ever skipped: the cap keeps W finite by itself
            y = layer(x)
        mean, var, cov = WM.channel_moments_and_covariance(x, 4)
        uncapped = WM.swbn_step(uncapped, WM.correlation(cov, torch.rsqrt(var + layer.eps)), alpha)
    assert not bool(torch.isfinite(uncapped).all())  # what the plain rule does: W overflows
    w = layer.whitening_matrix
    assert bool(torch.isfinite(w).all()) and bool(torch.isfinite(y).all())
    eig = torch.linalg.eigvalsh(w).abs()
    assert float(eig.max()) <= cap * (1 + 1e-5)
    assert float(eig.max()) >= 0.99 * cap  # the cap is what bounds it
    assert layer.skipped_updates == 0
    layer.eval()
    assert bool(torch.isfinite(layer(_rank_deficient(8))).all())


def test_swbn_cap_never_binds_on_full_rank_input():
    """On full-rank batches W follows the plain SWBN rule bit for bit (committed results keep their meaning)."""
    torch.manual_seed(1)
    alpha = 0.05
    layer = create("swbn", 8, group_size=4, alpha=alpha).train()
    plain = torch.eye(4).expand(2, 4, 4).clone()
    mix = torch.eye(8) + 0.3 * torch.randn(8, 8)  # correlated, well-conditioned channels
    for _ in range(60):
        x = torch.randn(32, 8) @ mix
        with primitive_kernels():  # R_B as the reference computes it (the fused path agrees to rounding)
            layer(x)
        mean, var, cov = WM.channel_moments_and_covariance(x, 4)
        plain = WM.swbn_step(plain, WM.correlation(cov, torch.rsqrt(var + layer.eps)), alpha)
    assert torch.equal(layer.whitening_matrix, plain)


def test_dbn_whitens_a_non_finite_group_by_the_identity_and_the_others_as_usual():
    torch.manual_seed(0)
    layer = create("dbn", 8, group_size=4).train()
    x = torch.randn(6, 8, 3, 3)
    clean = layer.stats(x).matrix
    x[2, 5, 1, 1] = math.nan  # channel 5: the second group
    matrix = layer.stats(x).matrix
    assert torch.equal(matrix[1], torch.eye(4))
    torch.testing.assert_close(matrix[0], clean[0], rtol=0, atol=0)
    with pytest.warns(RuntimeWarning, match="NaN or infinity in its batch statistics"):
        layer(x)
    assert int(layer.num_batches_tracked) == 0
