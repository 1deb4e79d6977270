"""Tests of Batch Kalman Normalization (``kalmannorm``) and its moment propagation (norms-spec §7)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.norms import create
from fewshot.norms.functional import Moments
from fewshot.norms.kalmannorm import kalman_fuse, propagate_moments, rectified_gaussian_moments

F64 = torch.float64


def _prior(c: int, seed: int = 3) -> Moments:
    g = torch.Generator().manual_seed(seed)
    return Moments(torch.randn(c, generator=g, dtype=F64), 0.5 + torch.rand(c, generator=g, dtype=F64))


def _pair(seed: int = 0) -> tuple[nn.Conv2d, nn.Module, nn.Conv2d, nn.Module]:
    torch.manual_seed(seed)
    conv1, conv2 = nn.Conv2d(2, 4, 3, padding=1).double(), nn.Conv2d(4, 4, 3, padding=1).double()
    return conv1, create("kalmannorm", 4, dtype=F64), conv2, create("kalmannorm", 4, p_rate=0.6, dtype=F64)


class TestBatchNormLimit:
    def test_p_rate_zero_is_torch_batchnorm_with_a_prior_in_train_and_eval(self, make_x, randomize_affine):
        layer = randomize_affine(create("kalmannorm", 4, p_rate=0.0, dtype=F64))
        bn = nn.BatchNorm2d(4, dtype=F64)
        bn.load_state_dict({**bn.state_dict(), "weight": layer.weight.detach(), "bias": layer.bias.detach()})
        for seed in range(3):
            x = make_x(5, 4, 3, 3, dtype=F64, seed=seed)
            y, _ = layer.forward_with_state(x, _prior(4))
            torch.testing.assert_close(y, bn(x), rtol=0, atol=1e-12)
        layer.eval()
        bn.eval()
        x = make_x(5, 4, 3, 3, dtype=F64, seed=7)
        torch.testing.assert_close(layer.forward_with_state(x, _prior(4))[0], bn(x), rtol=0, atol=1e-12)

    def test_no_prior_and_plain_forward_are_batchnorm(self, make_x):
        layer = create("kalmannorm", 4, p_rate=0.9, dtype=F64)
        x = make_x(5, 4, 3, 3, dtype=F64)
        bn = nn.BatchNorm2d(4, dtype=F64)
        torch.testing.assert_close(layer.forward_with_state(x, None)[0], bn(x), rtol=0, atol=1e-12)
        torch.testing.assert_close(layer(x), bn(x), rtol=0, atol=1e-12)


class TestMoments:
    def test_rectified_gaussian_matches_monte_carlo(self):
        mean, var = torch.tensor([-1.0, 0.0, 0.7, 2.0], dtype=F64), torch.tensor([0.5, 1.0, 2.0, 0.3], dtype=F64)
        noise = torch.randn(400_000, 4, generator=torch.Generator().manual_seed(0), dtype=F64)
        z = torch.relu(mean + var.sqrt() * noise)
        got = rectified_gaussian_moments(mean, var)
        torch.testing.assert_close(got.mean, z.mean(0), rtol=0, atol=5e-3)
        torch.testing.assert_close(got.var, z.var(0), rtol=0, atol=1e-2)

    def test_rectified_gaussian_with_zero_variance_is_relu_of_the_mean(self):
        got = rectified_gaussian_moments(torch.tensor([-2.0, 3.0]), torch.zeros(2))
        assert torch.equal(got.mean, torch.tensor([0.0, 3.0])) and torch.equal(got.var, torch.zeros(2))

    def test_predict_matches_monte_carlo_through_relu_and_conv(self):
        conv = nn.Conv2d(3, 5, 3).double()  # no padding: every output sees 3·3·3 independent inputs
        post = Moments(torch.tensor([0.2, -0.5, 1.0], dtype=F64), torch.tensor([1.0, 0.4, 2.0], dtype=F64))
        layer = create("kalmannorm", 5, dtype=F64)
        prior = layer.predict(post, conv)
        g = torch.Generator().manual_seed(1)
        pre = post.mean.view(1, 3, 1, 1) + post.var.sqrt().view(1, 3, 1, 1) * torch.randn(
            200_000, 3, 3, 3, generator=g, dtype=F64
        )
        with torch.no_grad():
            out = conv(torch.relu(pre)).flatten(1)
        scale = out.std(0)
        torch.testing.assert_close(prior.mean / scale, out.mean(0) / scale, rtol=0, atol=1e-2)
        torch.testing.assert_close(prior.var / out.var(0), torch.ones(5, dtype=F64), rtol=0, atol=1e-2)

    def test_propagation_through_linear_and_errors(self):
        lin = nn.Linear(2, 3).double()
        got = propagate_moments(torch.tensor([1.0, 2.0], dtype=F64), torch.tensor([0.5, 0.25], dtype=F64), lin)
        torch.testing.assert_close(got.mean, lin.weight @ torch.tensor([1.0, 2.0], dtype=F64) + lin.bias)
        torch.testing.assert_close(got.var, lin.weight.pow(2) @ torch.tensor([0.5, 0.25], dtype=F64))
        with pytest.raises(ValueError, match="groups=1, got groups=2"):
            propagate_moments(torch.zeros(4), torch.ones(4), nn.Conv2d(4, 4, 1, groups=2))
        with pytest.raises(ValueError, match="takes 2 input channels but the posterior has 4"):
            propagate_moments(torch.zeros(4), torch.ones(4), lin.float())
        with pytest.raises(TypeError, match="expects nn.Conv2d or nn.Linear"):
            propagate_moments(torch.zeros(4), torch.ones(4), nn.ReLU())

    def test_fuse_gives_the_moments_of_the_mixture(self):
        obs, p = Moments(torch.tensor([0.3]), torch.tensor([2.0])), 0.3
        pred = Moments(torch.tensor([-1.0]), torch.tensor([0.5]))
        got = kalman_fuse(obs, pred, p, guard_ratio=100.0, eps=0.0)
        mean = p * pred.mean + (1 - p) * obs.mean
        second = p * (pred.var + pred.mean**2) + (1 - p) * (obs.var + obs.mean**2)
        torch.testing.assert_close(got.mean, mean)
        torch.testing.assert_close(got.var, second - mean**2)


class TestLayer:
    def test_guard_falls_back_to_batchnorm_when_the_prediction_is_far_off(self, make_x):
        layer = create("kalmannorm", 4, p_rate=0.5, dtype=F64)
        x = make_x(5, 4, 3, 3, dtype=F64)
        bn_out = nn.BatchNorm2d(4, dtype=F64)(x)
        obs_var = x.var((0, 2, 3), unbiased=False)
        wild = Moments(torch.zeros(4, dtype=F64), 101.0 * obs_var)  # ratio just above 100
        torch.testing.assert_close(layer.forward_with_state(x, wild)[0], bn_out, rtol=0, atol=1e-12)
        near = Moments(torch.zeros(4, dtype=F64), 99.0 * obs_var)
        assert not torch.allclose(layer.forward_with_state(x, near)[0], bn_out)

    def test_posterior_is_the_exact_moments_of_the_output(self, make_x, randomize_affine):
        layer = randomize_affine(create("kalmannorm", 4, p_rate=0.7, dtype=F64))
        x = make_x(6, 4, 3, 3, dtype=F64)
        for mode in ("train", "eval"):
            layer.train(mode == "train")
            y, post = layer.forward_with_state(x, _prior(4))
            torch.testing.assert_close(post.mean, y.mean((0, 2, 3)), rtol=0, atol=1e-12)
            torch.testing.assert_close(post.var, y.var((0, 2, 3), unbiased=False), rtol=0, atol=1e-12)

    def test_running_statistics_track_the_filtered_moments(self, make_x):
        layer = create("kalmannorm", 4, p_rate=0.4, momentum=1.0, dtype=F64)
        x, prior = make_x(5, 4, 3, 3, dtype=F64), _prior(4)
        layer.forward_with_state(x, prior)
        observed = Moments(x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False))
        fused = kalman_fuse(observed, prior, 0.4, 100.0, layer.eps)
        assert not torch.allclose(fused.mean, observed.mean)
        torch.testing.assert_close(layer.running_mean, fused.mean, rtol=0, atol=1e-14)
        torch.testing.assert_close(layer.running_var, fused.var * 45 / 44, rtol=0, atol=1e-13)  # unbiased, m = 45

    def test_gradient_reaches_the_conv_weights_through_the_prediction(self, make_x):
        conv1, kn1, conv2, kn2 = _pair()
        x = make_x(4, 2, 5, 5, dtype=F64)
        y1, post = kn1.forward_with_state(conv1(x), None)
        h = conv2(torch.relu(y1))
        loss = kn2.forward_with_state(h, kn2.predict(post, conv2))[0].pow(3).sum()
        full = torch.autograd.grad(loss, conv2.weight, retain_graph=True)[0]
        prior = kn2.predict(post, conv2)
        assert torch.autograd.grad(prior.mean.sum() + prior.var.sum(), conv2.weight)[0].abs().sum() > 0
        detached = kn2.forward_with_state(h, Moments(prior.mean.detach(), prior.var.detach()))[0].pow(3).sum()
        without = torch.autograd.grad(detached, conv2.weight)[0]
        assert not torch.allclose(full, without)

    def test_bad_options_and_prior_shapes_raise(self, make_x):
        with pytest.raises(ValueError, match=r"p_rate must be a number in \[0, 1\], got 1.5"):
            create("kalmannorm", 4, p_rate=1.5)
        with pytest.raises(ValueError, match="guard_ratio must be a number > 0"):
            create("kalmannorm", 4, guard_ratio=0)
        layer = create("kalmannorm", 4)
        with pytest.raises(ValueError, match=r"prior must hold two \(4,\) tensors, got shapes \(3,\) and \(4,\)"):
            layer.forward_with_state(make_x(5, 4, 2, 2), (torch.zeros(3), torch.ones(4)))
        assert layer.passes_state and layer.p_rate == 0.5
