"""Tests of Stochastic Whitening Batch Normalization (``swbn``): the invariants of norms-spec §2.11."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from fewshot.norms import collect, create, frozen_stats, using
from fewshot.norms import whitening_math as WM
from fewshot.norms.state import notify_lr_scale
from fewshot.norms.swbn import SWBN

F64 = torch.float64


@pytest.fixture
def single_thread():
    """Run many tiny forwards on one thread: on a busy 2-core machine, waking a second thread costs more."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _correlated(m: int, d: int, seed: int, spectrum: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``m`` samples of N(0, Σ) with Σ = Q diag(spectrum) Qᵀ (default 0.05…3.05), and Σ's square root."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=torch.Generator().manual_seed(1234), dtype=F64))
    spectrum = torch.linspace(0.05, 3.05, d, dtype=F64) if spectrum is None else spectrum
    root = q @ torch.diag(spectrum.sqrt()) @ q.T
    return torch.randn(m, d, generator=g, dtype=F64) @ root, root


def _batch_correlation(x: torch.Tensor, eps: float) -> torch.Tensor:
    xc = x - x.mean(0)
    xs = xc / (xc.pow(2).mean(0) + eps).sqrt()
    return xs.T @ xs / x.shape[0]


def _inv_sqrt(a: torch.Tensor) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(a)
    return evecs @ torch.diag(evals.rsqrt()) @ evecs.T


def _reference_forward(layer: SWBN, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """SWBN's training forward from primitives with a given (detached) whitening matrix ``w (G, g, g)``."""
    mean = x.mean((0, 2, 3), keepdim=True)
    var = (x - mean).pow(2).mean((0, 2, 3), keepdim=True)
    xs = (x - mean) / (var + layer.eps).sqrt()
    xw = torch.einsum("ij,nj...->ni...", WM.block_diagonal(w), xs)
    return xw * layer.weight.view(1, -1, 1, 1) + layer.bias.view(1, -1, 1, 1)


class TestBatchNormLimit:
    @pytest.mark.parametrize("momentum", [0.1, None])
    def test_alpha_zero_equals_torch_batchnorm_in_train_and_eval(self, momentum, make_x):
        swbn = create("swbn", 8, alpha=0.0, momentum=momentum, group_size=4, dtype=F64)
        bn = nn.BatchNorm2d(8, momentum=momentum, dtype=F64)
        with torch.no_grad():
            for p in (swbn.weight, bn.weight):
                p.copy_(torch.linspace(0.5, 1.5, 8))
            for p in (swbn.bias, bn.bias):
                p.copy_(torch.linspace(-1, 1, 8))
        for seed in range(3):
            x = make_x(6, 8, 3, 3, dtype=F64, seed=seed)
            torch.testing.assert_close(swbn(x), bn(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(swbn.running_mean, bn.running_mean, rtol=0, atol=1e-14)
        torch.testing.assert_close(swbn.running_var, bn.running_var, rtol=0, atol=1e-13)
        assert torch.equal(swbn.whitening_matrix, torch.eye(4, dtype=F64).expand(2, 4, 4))
        swbn.eval()
        bn.eval()
        x = make_x(5, 8, 3, 3, dtype=F64, seed=9)
        torch.testing.assert_close(swbn(x), bn(x), rtol=0, atol=1e-12)

    def test_alpha_zero_equals_fewshot_batchnorm_in_float32_both_layouts(self, make_x):
        swbn, bn = create("swbn", 16, alpha=0.0), create("batchnorm", 16)
        for fmt in (torch.contiguous_format, torch.channels_last):
            x = make_x(7, 16, 5, 5).contiguous(memory_format=fmt)
            y = swbn(x)
            torch.testing.assert_close(y, bn(x), rtol=1e-5, atol=1e-5)
            assert y.is_contiguous(memory_format=fmt)

    def test_no_running_state_is_batch_statistics_bn(self, make_x):
        with pytest.warns(UserWarning, match="keeps no whitening matrix, so it is batch-statistics BN"):
            swbn = create("swbn", 8, alpha=0.1, track_running_stats=False, dtype=F64)
        assert swbn.whitening_matrix is None
        x = make_x(5, 8, 2, 2, dtype=F64)
        tbn = create("batchnorm_transductive", 8, dtype=F64)
        swbn.eval()
        torch.testing.assert_close(swbn(x), tbn(x), rtol=0, atol=1e-12)


class TestWhiteningMatrixUpdate:
    def test_fixed_point_leaves_w_unchanged(self):
        x, _ = _correlated(200, 8, seed=0)
        layer = create("swbn", 8, alpha=0.05, group_size=8, dtype=F64)
        with torch.no_grad():
            layer.whitening_matrix.copy_(_inv_sqrt(_batch_correlation(x, layer.eps))[None])
        before = layer.whitening_matrix.clone()
        layer(x)
        torch.testing.assert_close(layer.whitening_matrix, before, rtol=0, atol=1e-12)

    def test_kl_on_a_repeated_batch_converges_to_zca_of_the_batch_correlation(self, single_thread):
        x, _ = _correlated(400, 16, seed=0)
        # α = 0.1 is above the always-safe bound 1/(g−1) but below 1/(λ_max(R) − 1) for this R (λ_max ≈ 3).
        with pytest.warns(UserWarning, match="stability bound"):
            layer = create("swbn", 16, alpha=0.1, group_size=16, eps=1e-9, dtype=F64)
        target = _inv_sqrt(_batch_correlation(x, 1e-9))
        for _ in range(100):
            y = layer(x)
        w = layer.whitening_matrix[0]
        assert torch.linalg.matrix_norm(w - target) / torch.linalg.matrix_norm(target) < 1e-6
        yc = y - y.mean(0)
        torch.testing.assert_close(yc.T @ yc / 400, torch.eye(16, dtype=F64), rtol=0, atol=1e-6)

    def test_stochastic_batches_whiten_the_population_kl_better_than_fro(self, single_thread):
        # norms-spec §2.11.4: fresh batches of m = 80 from one population, α = 0.01. KL settles near a
        # population whiteness error of 0.064 (tolerance 0.1), Fro near 0.30. 800 steps suffice here (the
        # smallest direction needs ~160 steps to grow, then the relaxation time is 1/(2α) = 50 steps).
        d, m = 16, 80
        _, root = _correlated(1, d, seed=0)
        pop_cov = root @ root
        std = pop_cov.diagonal().sqrt()
        pop_corr = pop_cov / std[:, None] / std[None, :]
        errors = {}
        for criterion in ("kl", "fro"):
            layer = create("swbn", d, alpha=0.01, criterion=criterion, group_size=d, dtype=F64)
            g = torch.Generator().manual_seed(5)
            for _ in range(800):
                layer(torch.randn(m, d, generator=g, dtype=F64) @ root)
            errors[criterion] = float(WM.whiteness_error(layer.whitening_matrix[0], pop_corr))
        assert errors["kl"] < 0.1
        assert errors["fro"] > 2 * errors["kl"]

    def test_rank_deficient_groups_grow_w_without_shrinkage_and_stay_bounded_with_it(self, single_thread):
        # The first Conv-4 layer on grey images: 16 channels that are linear maps of a 9-dimensional patch, so
        # R_B has rank <= 9 in every batch. The plain KL step multiplies W by (1 + α) per update along the 7 null
        # directions, which move a little from batch to batch (per-batch standardization), so the growth saturates
        # far above any whitening of the signal; shrinking R_B towards I makes the fixed point
        # ((1 − ρ) R + ρ I)^{-1/2}, eigenvalues <= 1/√ρ.
        g = torch.Generator().manual_seed(3)
        conv_map = torch.randn(16, 9, generator=g, dtype=F64)
        batches = [torch.randn(60, 9, generator=g, dtype=F64) @ conv_map.T for _ in range(4)]
        rho, steps, alpha = 0.1, 600, 0.01
        top = {}
        for shrinkage in (0.0, rho):
            layer = create("swbn", 16, alpha=alpha, group_size=16, shrinkage=shrinkage, dtype=F64)
            for i in range(steps):
                layer(batches[i % 4])
            top[shrinkage] = float(torch.linalg.eigvalsh(layer.whitening_matrix[0]).max())
        # the largest gain a whitening of the 9-dimensional signal needs, over the batches (about 2.2)
        signal_gain = max(float(torch.linalg.eigvalsh(_batch_correlation(b, 1e-5))[-9:].min().rsqrt()) for b in batches)
        assert top[0.0] > 5 * signal_gain  # 24.7 here: the null directions are amplified ~11x beyond the signal's
        assert top[rho] <= rho**-0.5 + 1e-6
        # with one repeated batch the shrunk update converges to ((1 − ρ) R + ρ I)^{-1/2}
        layer = create("swbn", 16, alpha=0.05, group_size=16, shrinkage=rho, eps=1e-9, dtype=F64)
        for _ in range(400):
            layer(batches[0])
        target = _inv_sqrt(WM.shrink_to_identity(_batch_correlation(batches[0], 1e-9), rho))
        torch.testing.assert_close(layer.whitening_matrix[0], target, rtol=0, atol=1e-8)

    def test_zero_shrinkage_is_the_plain_update_bit_for_bit(self, make_x):
        plain, shrunk = create("swbn", 8, alpha=0.05), create("swbn", 8, alpha=0.05, shrinkage=0.0)
        for seed in range(3):
            x = make_x(4, 8, 3, 3, seed=seed)
            torch.testing.assert_close(plain(x), shrunk(x), rtol=0, atol=0)
        torch.testing.assert_close(plain.whitening_matrix, shrunk.whitening_matrix, rtol=0, atol=0)

    def test_w_stays_exactly_symmetric(self, make_x):
        layer = create("swbn", 8, alpha=0.05, group_size=8, criterion="fro")
        for seed in range(20):
            layer(make_x(4, 8, 3, 3, seed=seed))
        w = layer.whitening_matrix
        assert torch.equal(w, w.mT)
        assert not torch.equal(w, torch.eye(8).expand_as(w))

    def test_w_gets_no_gradient_and_input_gradient_treats_w_as_constant(self, make_x, randomize_affine):
        layer = randomize_affine(create("swbn", 8, alpha=0.05, group_size=4, dtype=F64))
        layer(make_x(6, 8, 3, 3, dtype=F64, seed=1))  # W ≠ I
        x = make_x(5, 8, 3, 3, dtype=F64).requires_grad_()
        upstream = make_x(5, 8, 3, 3, dtype=F64, seed=2)
        (layer(x) * upstream).sum().backward()
        w = layer.whitening_matrix
        assert not w.requires_grad and w.grad is None
        x_ref = x.detach().clone().requires_grad_()
        (_reference_forward(layer, x_ref, w.detach()) * upstream).sum().backward()  # W after this forward's update
        torch.testing.assert_close(x.grad, x_ref.grad, rtol=0, atol=1e-12)

    def test_two_training_forwards_before_one_backward(self, make_x):
        layer = create("swbn", 8, alpha=0.05)
        loss = layer(make_x(5, 8, 2, 2, seed=0)).pow(2).sum() + layer(make_x(5, 8, 2, 2, seed=1)).pow(3).sum()
        loss.backward()  # the in-place W update of the 2nd forward must not invalidate the 1st one's graph
        assert torch.isfinite(layer.weight.grad).all()


class TestStateGating:
    def test_eval_and_frozen_stats_leave_w_and_moments_unchanged(self, make_x, snapshot, assert_buffers_equal):
        layer = create("swbn", 8, alpha=0.05)
        for seed in range(3):
            layer(make_x(5, 8, 3, 3, seed=seed))
        before = snapshot(layer)
        with frozen_stats(layer):
            layer(make_x(5, 8, 3, 3, seed=7))
        assert_buffers_equal(layer, before)
        layer.eval()
        layer(make_x(5, 8, 3, 3, seed=8))
        assert_buffers_equal(layer, before)

    def test_eval_standardizes_with_running_moments_and_applies_w(self, make_x):
        layer = create("swbn", 8, alpha=0.05, group_size=4, dtype=F64)
        for seed in range(3):
            layer(make_x(5, 8, 3, 3, dtype=F64, seed=seed))
        layer.eval()
        x = make_x(4, 8, 3, 3, dtype=F64, seed=9)
        xs = (x - layer.running_mean.view(1, -1, 1, 1)) / (layer.running_var.view(1, -1, 1, 1) + layer.eps).sqrt()
        expected = torch.einsum("ij,nj...->ni...", WM.block_diagonal(layer.whitening_matrix), xs)
        torch.testing.assert_close(layer(x), expected, rtol=0, atol=1e-12)

    def test_support_policy_standardizes_the_query_with_support_moments(self, make_x):
        layer = create("swbn", 8, alpha=0.05, policy="support", dtype=F64)
        support, query = make_x(5, 8, 3, 3, dtype=F64), make_x(7, 8, 3, 3, dtype=F64, seed=1)
        with collect(layer) as support_stats:
            layer(support)
        w = layer.whitening_matrix.clone()
        with using(layer, support_stats):
            y = layer(query)
        assert torch.equal(layer.whitening_matrix, w)  # queries never update W
        mean = support.mean((0, 2, 3), keepdim=True)
        var = (support - mean).pow(2).mean((0, 2, 3), keepdim=True)
        xs = (query - mean) / (var + layer.eps).sqrt()
        torch.testing.assert_close(y, torch.einsum("ij,nj...->ni...", WM.block_diagonal(w), xs), rtol=0, atol=1e-12)


class TestWhiteningRate:
    def test_the_lr_scale_hook_sets_every_swbn_layer_and_no_other(self):
        model = nn.Sequential(
            create("swbn", 8, alpha=0.02), nn.ReLU(), create("swbn", 8, alpha=0.04), create("batchnorm", 8)
        )
        notify_lr_scale(model, 0.5)
        assert [model[0].whitening_rate, model[2].whitening_rate] == [0.01, 0.02]
        assert model[0].alpha == 0.02  # the configured rate is kept

    def test_zero_factor_freezes_w_but_not_the_moments(self, make_x):
        layer = create("swbn", 8, alpha=0.05)
        layer.set_whitening_rate(0.0)
        layer(make_x(5, 8, 2, 2))
        assert torch.equal(layer.whitening_matrix, torch.eye(8).expand(1, 8, 8))
        assert int(layer.num_batches_tracked) == 1 and not torch.equal(layer.running_mean, torch.zeros(8))

    def test_factor_scales_the_step(self, make_x):
        x = make_x(6, 4, 3, 3, dtype=F64)
        half, full = create("swbn", 4, alpha=0.02, dtype=F64), create("swbn", 4, alpha=0.01, dtype=F64)
        half.set_whitening_rate(0.5)
        half(x)
        full(x)
        assert torch.equal(half.whitening_matrix, full.whitening_matrix) and half.whitening_rate == 0.01

    @pytest.mark.parametrize("bad", [-1.0, float("nan"), "0.1"])
    def test_bad_factor_raises(self, bad):
        with pytest.raises(ValueError, match="whitening-rate factor must be a finite number >= 0"):
            create("swbn", 4).set_whitening_rate(bad)

    def test_rate_above_the_stability_bound_warns(self):
        with pytest.warns(UserWarning, match=r"alpha=0.2 is at or above the stability bound 1/\(group_size-1\)=0.143"):
            create("swbn", 16, alpha=0.2, group_size=8)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            create("swbn", 16, alpha=0.1, group_size=8)


class TestConstruction:
    def test_defaults(self):
        layer = create("swbn", 64)
        assert (layer.group_size, layer.alpha, layer.criterion, layer.shrinkage) == (16, 1e-3, "kl", 0.0)
        assert layer.whitening_matrix.shape == (4, 16, 16)

    def test_small_layers_fall_back_to_one_group(self):
        assert create("swbn", 6).whitening_matrix.shape == (1, 6, 6)

    @pytest.mark.parametrize(
        "kwargs,match",
        [
            ({"criterion": "l2"}, r"criterion must be one of \('kl', 'fro'\), got 'l2'"),
            ({"alpha": -0.1}, r"alpha \(whitening rate\) must be a finite number >= 0, got -0.1"),
            ({"group_size": 5}, r"group_size=5 does not divide num_features=8"),
            ({"tau": 0}, r"tau must be a number > 0"),
            (
                {"shrinkage": 1.0},
                r"shrinkage \(of R_B towards I in the W update\) must be a number in \[0, 1\), got 1.0",
            ),
            ({"shrinkage": -0.1}, r"must be a number in \[0, 1\), got -0.1"),
        ],
    )
    def test_bad_options_raise(self, kwargs, match):
        with pytest.raises(ValueError, match=match):
            create("swbn", 8, **kwargs)

    def test_converted_from_batchnorm_reproduces_it_in_eval(self, make_x):
        bn = nn.BatchNorm2d(8)
        bn(make_x(6, 8, 3, 3))
        layer = create("swbn", 8, alpha=0.05)
        layer(make_x(6, 8, 3, 3, seed=3))  # W ≠ I before loading
        layer.load_batchnorm_state(bn)
        bn.eval()
        layer.eval()
        x = make_x(4, 8, 3, 3, seed=4)
        torch.testing.assert_close(layer(x), bn(x), rtol=1e-5, atol=1e-5)
