"""``whiteness`` on activations with exactly known covariances; ``collect_whiteness`` on a model."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from fewshot.norms import collect, collect_whiteness, create, frozen_stats, set_policy, whiteness

# Four samples (rows) of three channels: each column has mean 0 and entries ±1, and the columns are orthogonal,
# so the biased channel covariance is exactly the identity.
WHITE = torch.tensor([[1.0, 1, 1], [-1, 1, -1], [1, -1, -1], [-1, -1, 1]], dtype=torch.float64)


def test_white_data_scores_zero_error_and_condition_one():
    m = whiteness(WHITE)
    assert m["cov_error"] == pytest.approx(0, abs=1e-12) and m["corr_error"] == pytest.approx(0, abs=1e-12)
    assert m["cond"] == pytest.approx(1) and m["mean_var"] == pytest.approx(1) and m["mean_abs_corr"] == 0
    assert m["num_channels"] == 3 and m["num_samples"] == 4


def test_scaled_white_data_has_covariance_error_but_no_correlation_error():
    m = whiteness(2 * WHITE + 5)  # Σ = 4·I
    assert m["cov_error"] == pytest.approx(3.0)  # ‖3·I‖_F / √3
    assert m["corr_error"] == pytest.approx(0, abs=1e-12) and m["cond"] == pytest.approx(1)
    assert m["mean_var"] == pytest.approx(4.0)


def test_correlated_data_with_known_covariance():
    chol = torch.tensor([[1.0, 0.0], [0.5, math.sqrt(0.75)]], dtype=torch.float64)
    m = whiteness(WHITE[:, :2] @ chol.T)  # Σ = L·Lᵀ = [[1, .5], [.5, 1]]
    assert m["cov_error"] == pytest.approx(0.5) and m["corr_error"] == pytest.approx(0.5)
    assert m["mean_abs_corr"] == pytest.approx(0.5) and m["cond"] == pytest.approx(3.0)


def test_unequal_variances_without_correlation():
    m = whiteness(WHITE[:, :2] * torch.tensor([2.0, 1.0], dtype=torch.float64))  # Σ = diag(4, 1)
    assert m["cov_error"] == pytest.approx(3 / math.sqrt(2)) and m["corr_error"] == pytest.approx(0, abs=1e-12)
    assert m["cond"] == pytest.approx(4.0)


def test_a_dead_channel_is_singular_and_counts_as_non_white():
    x = torch.cat([WHITE[:, :1], torch.full((4, 1), 3.0, dtype=torch.float64)], dim=1)
    m = whiteness(x)
    assert m["cond"] == math.inf
    assert m["corr_error"] == pytest.approx(1 / math.sqrt(2))  # R = diag(1, 0)


def test_4d_input_pools_channels_over_batch_and_space():
    x4 = WHITE.reshape(2, 1, 2, 3).permute(0, 3, 1, 2)  # (N=2, C=3, H=1, W=2), samples = rows of WHITE
    assert whiteness(x4) == pytest.approx(whiteness(WHITE))
    assert whiteness(WHITE.T.reshape(1, 3, 2, 2)) == pytest.approx(whiteness(WHITE))


def test_whiteness_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"expected 2D \(N, C\) or 4D \(N, C, H, W\) activations \(got 3D"):
        whiteness(torch.zeros(2, 3, 4))
    with pytest.raises(ValueError, match="at least 2 values per channel"):
        whiteness(torch.zeros(1, 3))


def _model():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 1),
        create("batchnorm", 4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 1),
        nn.Sequential(create("groupnorm", 4, groups=2)),
    )


def test_collect_whiteness_measures_every_norm_layer_output_without_changing_state(
    make_x, snapshot, assert_buffers_equal
):
    model, x = _model(), make_x(6, 1, 3, 3)
    before = snapshot(model)
    result = collect_whiteness(model, x)
    assert list(result) == ["1", "4.0"]
    assert_buffers_equal(model, before)
    assert all(not m._forward_hooks for m in model.modules())
    with torch.no_grad(), frozen_stats(model):
        bn_out = model[:2](x)
        gn_out = model[2:](bn_out)
    assert result["1"] == pytest.approx(whiteness(bn_out))
    assert result["4.0"] == pytest.approx(whiteness(gn_out))
    # every channel of a 1-input 1x1 conv is an affine function of the same input: |correlation| = 1
    assert result["1"]["mean_abs_corr"] == pytest.approx(1.0, abs=1e-6)


def test_collect_whiteness_removes_hooks_on_error_and_works_while_collecting_support_statistics(make_x):
    model = _model()
    set_policy(model, "support")
    with pytest.raises(RuntimeError, match="no support statistics"):
        collect_whiteness(model, make_x(6, 1, 3, 3))
    assert all(not m._forward_hooks for m in model.modules())
    with collect(model):
        assert set(collect_whiteness(model, make_x(6, 1, 3, 3))) == {"1", "4.0"}
