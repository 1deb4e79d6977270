"""Tests of the pure whitening math in ``fewshot.norms.whitening_math`` (float64 unless stated)."""

from __future__ import annotations

import pytest
import torch
from torch.func import grad, vmap

from fewshot.norms import whitening_math as WM

F64 = torch.float64


def _spd(d: int, eigenvalues: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=g, dtype=F64))
    return q @ torch.diag(eigenvalues.to(F64)) @ q.T


def _inv_sqrt_eigh(a: torch.Tensor) -> torch.Tensor:
    evals, evecs = torch.linalg.eigh(a)
    return evecs @ torch.diag_embed(evals.rsqrt()) @ evecs.mT


def _reference_blocks(x: torch.Tensor, g: int) -> torch.Tensor:
    cols = x.transpose(0, 1).reshape(x.shape[1], -1)
    return torch.stack([cols[i : i + g] @ cols[i : i + g].T for i in range(0, x.shape[1], g)]) / cols.shape[1]


class TestResolveGroupSize:
    def test_default_larger_than_channels_falls_back_to_all_channels(self):
        assert WM.resolve_group_size(20, None, 64, layer="L") == 20

    def test_default_that_does_not_divide_uses_the_largest_divisor_below_it(self):
        assert WM.resolve_group_size(160, None, 64, layer="L") == 40
        assert WM.resolve_group_size(7, None, 4, layer="L") == 1

    def test_explicit_value_larger_than_channels_falls_back(self):
        assert WM.resolve_group_size(6, 16, 16, layer="L") == 6

    def test_explicit_value_that_does_not_divide_raises_listing_divisors(self):
        match = r"L: group_size=7 does not divide num_features=24.*\[1, 2, 3, 4, 6, 8, 12, 24\]"
        with pytest.raises(ValueError, match=match):
            WM.resolve_group_size(24, 7, 16, layer="L")

    @pytest.mark.parametrize("bad", [0, -2, 2.0, True])
    def test_non_positive_or_non_int_raises(self, bad):
        with pytest.raises(ValueError, match="groups must be a positive int"):
            WM.resolve_group_size(8, bad, 4, layer="L", option="groups")


class TestGroupProducts:
    @pytest.mark.parametrize("g", [1, 2, 4, 8, 16, 32])
    @pytest.mark.parametrize("layout", ["nchw", "channels_last", "2d", "sliced"])
    def test_second_moment_matches_block_reference(self, g, layout):
        x = torch.randn(5, 32, 3, 3, dtype=F64)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "2d":
            x = x[:, :, 0, 0]
        elif layout == "sliced":
            x = torch.randn(5, 32, 3, 6, dtype=F64)[..., ::2]
        torch.testing.assert_close(WM.group_second_moment(x, g), _reference_blocks(x, g), rtol=0, atol=1e-13)

    @pytest.mark.parametrize("layout", ["nchw", "channels_last", "2d"])
    def test_apply_group_matrix_equals_block_diagonal_product(self, layout):
        x = torch.randn(4, 12, 3, 2, dtype=F64)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "2d":
            x = x[:, :, 0, 0]
        a, b = torch.randn(3, 4, 4, dtype=F64), torch.randn(12, dtype=F64)
        full = WM.block_diagonal(a)
        expected = torch.einsum("ij,nj...->ni...", full, x) + b.reshape(1, -1, *([1] * (x.dim() - 2)))
        y = WM.apply_group_matrix(x, a, b)
        torch.testing.assert_close(y, expected, rtol=0, atol=1e-13)
        if layout == "channels_last":
            assert y.is_contiguous(memory_format=torch.channels_last)

    def test_block_diagonal_places_blocks_and_zeros(self):
        a = torch.arange(8.0).reshape(2, 2, 2)
        assert torch.equal(WM.block_diagonal(a), torch.block_diag(a[0], a[1]))

    def test_correlation_has_unit_diagonal_up_to_eps(self):
        x = torch.randn(50, 6, dtype=F64) * torch.tensor([1.0, 2, 3, 4, 5, 6], dtype=F64)
        xc = x - x.mean(0)
        var = xc.pow(2).mean(0)
        corr = WM.correlation(WM.group_second_moment(xc, 3), torch.rsqrt(var + 1e-3))
        torch.testing.assert_close(corr.diagonal(dim1=1, dim2=2).reshape(-1), var / (var + 1e-3), rtol=0, atol=1e-14)


class TestChannelMoments:
    @pytest.mark.parametrize("shape", [(6, 3, 4, 4), (7, 3)])
    def test_values_match_biased_variance_and_gradients_check(self, shape):
        x = (torch.randn(*shape, dtype=F64) * 3 + 5).requires_grad_()
        mean, var = WM.channel_moments(x)
        dims = (0, *range(2, x.dim()))
        torch.testing.assert_close(mean, x.mean(dims), rtol=0, atol=1e-13)
        torch.testing.assert_close(var, x.var(dims, unbiased=False), rtol=0, atol=1e-12)
        assert torch.autograd.gradcheck(WM.channel_moments, (x,))
        assert torch.autograd.gradgradcheck(WM.channel_moments, (x,))

    @pytest.mark.parametrize("layout", ["nchw", "channels_last", "2d"])
    def test_with_covariance_gives_the_same_moments_and_the_centred_covariance(self, layout):
        x = torch.randn(6, 8, 3, 3, dtype=F64) * 2 + 3
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        elif layout == "2d":
            x = x[:, :, 0, 0].contiguous()
        x.requires_grad_()
        mean, var, cov = WM.channel_moments_and_covariance(x, 4)
        ref_mean, ref_var = WM.channel_moments(x)
        torch.testing.assert_close(mean, ref_mean, rtol=0, atol=1e-13)
        torch.testing.assert_close(var, ref_var, rtol=0, atol=1e-12)
        centred = x.detach() - ref_mean.detach().reshape(1, -1, *([1] * (x.dim() - 2)))
        torch.testing.assert_close(cov, _reference_blocks(centred, 4), rtol=0, atol=1e-12)
        assert not cov.requires_grad
        assert torch.autograd.gradcheck(lambda a: WM.channel_moments_and_covariance(a, 4)[:2], (x,))

    def test_vmap_of_second_order_grad_equals_loop(self):
        xs = torch.randn(3, 5, 2, 3, 3, dtype=F64)

        def f(x):
            mean, var = WM.channel_moments(x)
            return (var.sqrt() * mean).sum()

        h = grad(lambda x: grad(f)(x).pow(2).sum())
        torch.testing.assert_close(vmap(h)(xs), torch.stack([h(x) for x in xs]), rtol=0, atol=1e-12)


class TestNewtonSchulz:
    def test_spectral_identity_against_the_scalar_recursion(self):
        sigma = _spd(8, torch.linspace(0.1, 4.0, 8))
        w = WM.newton_schulz_inv_sqrt(sigma, 5)
        evals, evecs = torch.linalg.eigh(sigma)
        trace = evals.sum()
        expected = evecs @ torch.diag(WM.newton_schulz_scalar(evals / trace, 5)) @ evecs.T / trace.sqrt()
        torch.testing.assert_close(w, expected, rtol=0, atol=1e-5)
        assert (w - expected).abs().max() < 1e-12  # in float64 it is in fact exact to rounding

    def test_converges_to_the_inverse_square_root_for_moderate_t(self):
        sigma = _spd(4, torch.tensor([0.5, 1.0, 1.5, 2.0]))
        torch.testing.assert_close(WM.newton_schulz_inv_sqrt(sigma, 12), _inv_sqrt_eigh(sigma), rtol=0, atol=1e-9)

    def test_zero_iterations_is_trace_scaling(self):
        sigma = _spd(3, torch.tensor([1.0, 2.0, 3.0]))
        expected = torch.eye(3, dtype=F64) / 6**0.5
        torch.testing.assert_close(WM.newton_schulz_inv_sqrt(sigma, 0), expected, rtol=0, atol=1e-15)


class TestZCA:
    def test_whitens_is_symmetric_and_commutes(self):
        sigma = _spd(6, torch.linspace(0.05, 3.0, 6))
        w = WM.zca_inv_sqrt(sigma)
        torch.testing.assert_close(w @ sigma @ w, torch.eye(6, dtype=F64), rtol=0, atol=1e-12)
        torch.testing.assert_close(w, w.T, rtol=0, atol=1e-13)
        torch.testing.assert_close(w @ sigma, sigma @ w, rtol=0, atol=1e-12)

    def test_gradcheck_and_gradgradcheck_on_generic_input(self):
        sigma = _spd(4, torch.tensor([0.3, 0.9, 1.7, 2.6])).expand(2, 4, 4).clone().requires_grad_()
        assert torch.autograd.gradcheck(WM.zca_inv_sqrt, (sigma,))
        assert torch.autograd.gradgradcheck(WM.zca_inv_sqrt, (sigma,))

    def test_gradient_is_exact_and_finite_on_repeated_eigenvalues(self):
        c = 2.5
        sigma = (c * torch.eye(4, dtype=F64)).requires_grad_()
        upstream = torch.randn(4, 4, dtype=F64)
        (WM.zca_inv_sqrt(sigma) * upstream).sum().backward()
        # W(Σ) = Σ^{-1/2} at Σ = cI has derivative E ↦ -c^{-3/2} E / 2 for symmetric E.
        expected = -0.5 * c**-1.5 * 0.5 * (upstream + upstream.T)
        torch.testing.assert_close(sigma.grad, expected, rtol=0, atol=1e-13)

    def test_plain_eigh_backward_is_not_finite_where_ours_is(self):
        sigma = torch.diag(torch.tensor([1e-5, 1e-5, 2.0], dtype=F64)).requires_grad_()
        evals, evecs = torch.linalg.eigh(sigma)
        naive = torch.autograd.grad(((evecs * evals.rsqrt()) @ evecs.T).pow(3).sum(), sigma)[0]
        ours = torch.autograd.grad(WM.zca_inv_sqrt(sigma, 1e-5).pow(3).sum(), sigma)[0]
        assert not torch.isfinite(naive).all()
        assert torch.isfinite(ours).all()


class TestSWBNStep:
    R_SPECTRUM = torch.linspace(0.05, 3.05, 16)

    def test_kl_vanishes_at_the_inverse_square_root(self):
        r = _spd(16, self.R_SPECTRUM)
        assert WM.swbn_delta(_inv_sqrt_eigh(r), r, "kl").abs().max() < 1e-12

    @pytest.mark.parametrize("criterion", ["kl", "fro"])
    def test_exact_fixed_point_gives_exactly_zero_also_with_the_fro_guard(self, criterion):
        # Powers of two make W R Wᵀ = I exact in floating point, so Fro's 0/0 is met by the τ floor.
        r = torch.diag(torch.tensor([4.0, 1.0, 0.25, 16.0], dtype=F64))
        w = torch.diag(torch.tensor([0.5, 1.0, 2.0, 0.25], dtype=F64))
        assert torch.equal(WM.swbn_delta(w, r, criterion), torch.zeros(4, 4, dtype=F64))

    def test_kl_on_a_fixed_batch_converges_to_zca_of_the_correlation(self):
        r = _spd(16, self.R_SPECTRUM)
        target = _inv_sqrt_eigh(r)
        w = torch.eye(16, dtype=F64)
        for _ in range(100):
            w = WM.swbn_step(w, r, 0.1, "kl")
        assert torch.linalg.matrix_norm(w - target) / torch.linalg.matrix_norm(target) < 1e-6
        assert WM.whiteness_error(w, r) < 1e-6
        torch.testing.assert_close(w, w.T, rtol=0, atol=0)

    def test_fro_decreases_the_whiteness_error_but_hovers(self):
        r = _spd(16, self.R_SPECTRUM)
        w = torch.eye(16, dtype=F64)
        start = WM.whiteness_error(w, r)
        for _ in range(300):
            w = WM.swbn_step(w, r, 0.05, "fro")
        assert WM.whiteness_error(w, r) < 0.2 * start

    def test_zero_rate_leaves_w_unchanged(self):
        r = _spd(4, torch.tensor([0.5, 1.0, 1.2, 1.3]))
        w = _spd(4, torch.tensor([0.9, 1.0, 1.1, 1.2]), seed=3)
        assert torch.equal(WM.swbn_step(w, r, 0.0), WM.symmetrize(w))

    def test_unknown_criterion_raises(self):
        with pytest.raises(ValueError, match=r"criterion must be one of \('kl', 'fro'\), got 'l2'"):
            WM.swbn_delta(torch.eye(2), torch.eye(2), "l2")


def test_per_sample_group_covariance_uses_only_each_sample():
    x = torch.randn(3, 6, 2, 2, dtype=F64)
    centred, cov = WM.per_sample_group_covariance(x, 3)
    assert centred.shape == (3, 3, 8) and cov.shape == (3, 3, 3)
    rows = x[1].reshape(3, 8)
    rows = rows - rows.mean(1, keepdim=True)
    torch.testing.assert_close(cov[1], rows @ rows.T / 8, rtol=0, atol=1e-14)
