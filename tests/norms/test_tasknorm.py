"""TaskNorm-I invariants (Bronskill et al., ICML 2020, arXiv 2003.03284; norms-spec §8.5)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from fewshot.norms import collect, create, using
from fewshot.norms.functional import Moments
from fewshot.norms.tasknorm import pooled_moments

DT = torch.float64


def _run_task(layer, support, query):
    with collect(layer) as support_stats:
        layer(support)
    with using(layer, support_stats):
        return layer(query)


def _set_alpha_logits(layer, scale, offset):
    with torch.no_grad():
        layer.scale.fill_(scale)
        layer.offset.fill_(offset)


def test_alpha_is_one_half_at_init_and_follows_the_sigmoid_of_the_context_size():
    layer = create("tasknorm", 4, dtype=DT)
    assert layer.alpha(5).item() == 0.5 and layer.alpha(100).item() == 0.5
    _set_alpha_logits(layer, 0.2, -0.5)
    torch.testing.assert_close(layer.alpha(5), torch.sigmoid(torch.tensor([0.5], dtype=DT)))


def test_alpha_one_is_metabn(make_x, make_layer):
    layer = make_layer("tasknorm", 4, policy="support", dtype=DT)
    metabn = create("batchnorm", 4, policy="support", dtype=DT)
    metabn.load_batchnorm_state(layer)  # the same affine parameters
    _set_alpha_logits(layer, 0.0, 60.0)  # sigmoid(60) == 1.0 in float64
    support, query = make_x(5, 4, 3, 3, dtype=DT), make_x(4, 4, 3, 3, dtype=DT, seed=1)
    torch.testing.assert_close(_run_task(layer, support, query), _run_task(metabn, support, query), rtol=0, atol=1e-12)


def test_alpha_zero_is_instance_norm(make_x, make_layer):
    layer = make_layer("tasknorm", 4, policy="support", dtype=DT)
    _set_alpha_logits(layer, 0.0, -60.0)
    support, query = make_x(5, 4, 3, 3, dtype=DT), make_x(4, 4, 3, 3, dtype=DT, seed=1)
    expected = F.instance_norm(query, weight=layer.weight, bias=layer.bias, eps=layer.eps)
    torch.testing.assert_close(_run_task(layer, support, query), expected, rtol=0, atol=1e-12)


def test_pooled_moments_are_the_moments_of_the_alpha_mixture(make_x):
    """Mixture α·Emp(context values) + (1 − α)·Emp(example values), moments computed from raw sums."""
    context, example = make_x(7, 3, 4, 4, dtype=DT), make_x(1, 3, 5, 5, dtype=DT, seed=1, shift=2.0)
    alpha = torch.tensor([0.3], dtype=DT)
    ctx_vals, ex_vals = context.transpose(0, 1).reshape(3, -1), example[0].reshape(3, -1)
    first = alpha * ctx_vals.mean(1) + (1 - alpha) * ex_vals.mean(1)
    second = alpha * ctx_vals.pow(2).mean(1) + (1 - alpha) * ex_vals.pow(2).mean(1)
    ctx = Moments(ctx_vals.mean(1), ctx_vals.var(1, unbiased=False))
    inst = Moments(ex_vals.mean(1)[None], ex_vals.var(1, unbiased=False)[None])
    pooled = pooled_moments(alpha, ctx, inst)
    torch.testing.assert_close(pooled.mean[0], first, rtol=0, atol=1e-12)
    torch.testing.assert_close(pooled.var[0], second - first**2, rtol=0, atol=1e-12)


def test_query_outputs_are_identical_whole_one_at_a_time_and_one_class_at_a_time(make_x, make_layer):
    layer = make_layer("tasknorm", 4, policy="support", dtype=DT)
    _set_alpha_logits(layer, 0.1, -0.2)
    support, query = make_x(6, 4, 3, 3, dtype=DT), make_x(6, 4, 3, 3, dtype=DT, seed=1)  # 3 classes × 2
    with collect(layer) as support_stats:
        layer(support)
    with using(layer, support_stats):
        whole = layer(query)
        by_example = torch.cat([layer(query[i : i + 1]) for i in range(6)])
        by_class = torch.cat([layer(query[c * 2 : c * 2 + 2]) for c in range(3)])
    torch.testing.assert_close(by_example, whole, rtol=0, atol=1e-12)
    torch.testing.assert_close(by_class, whole, rtol=0, atol=1e-12)


def test_alpha_uses_the_support_size_not_the_query_size(make_x, make_layer):
    layer = make_layer("tasknorm", 4, policy="support", dtype=DT)
    _set_alpha_logits(layer, 0.3, -1.0)
    support, query = make_x(5, 4, 3, 3, dtype=DT), make_x(1, 4, 3, 3, dtype=DT, seed=1)
    y = _run_task(layer, support, query)
    alpha = torch.sigmoid(torch.tensor(0.3 * 5 - 1.0, dtype=DT))
    mu_bn, var_bn = support.mean(dim=(0, 2, 3)), support.var(dim=(0, 2, 3), unbiased=False)
    mu_in, var_in = query.mean(dim=(2, 3))[0], query.var(dim=(2, 3), unbiased=False)[0]
    mu = alpha * mu_bn + (1 - alpha) * mu_in
    var = alpha * (var_bn + (mu_bn - mu) ** 2) + (1 - alpha) * (var_in + (mu_in - mu) ** 2)
    x_hat = (query - mu[None, :, None, None]) / torch.sqrt(var[None, :, None, None] + layer.eps)
    expected = x_hat * layer.weight[None, :, None, None] + layer.bias[None, :, None, None]
    torch.testing.assert_close(y, expected, rtol=0, atol=1e-12)


def test_query_loss_gradient_reaches_alpha_parameters_and_the_support_set(make_x):
    layer = create("tasknorm", 4, policy="support", dtype=DT)
    support = make_x(5, 4, 3, 3, dtype=DT).requires_grad_()
    y = _run_task(layer, support, make_x(3, 4, 3, 3, dtype=DT, seed=1))
    (y * make_x(*y.shape, dtype=DT, seed=2)).sum().backward()
    assert layer.scale.grad.abs() > 0 and layer.offset.grad.abs() > 0
    assert support.grad.abs().sum() > 0  # support moments are cached with their graph, not detached


def test_running_and_batch_policies_use_the_current_batch_as_context_in_both_modes(make_x, make_layer):
    x = make_x(6, 4, 3, 3, dtype=DT)
    reference = make_layer("tasknorm", 4, policy="support", dtype=DT)
    expected = _run_task(reference, x, x)
    for policy in ("running", "transductive"):
        layer = make_layer("tasknorm", 4, policy=policy, dtype=DT)
        assert not layer.track_running_stats and list(layer.buffers()) == []
        for mode in (True, False):
            torch.testing.assert_close(layer.train(mode)(x), expected, rtol=0, atol=1e-12)


def test_batch_policy_is_transductive_so_the_invariant_test_can_fail(make_x):
    layer = create("tasknorm", 4, policy="transductive", dtype=DT)
    query = make_x(6, 4, 3, 3, dtype=DT)
    assert not torch.allclose(layer(query)[:2], layer(query[:2]), atol=1e-4)
