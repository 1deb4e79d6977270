"""``batchnorm`` against ``torch.nn.BatchNorm1d/2d`` and ``batchnorm_transductive`` (TBN) semantics."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.norms import collect, create, set_policy, using
from fewshot.norms.batchnorm import BatchNorm, TransductiveBatchNorm

CASES = [
    pytest.param(torch.float32, (6, 5, 3, 3), 1e-6, id="float32-4d"),
    pytest.param(torch.float32, (6, 5), 1e-6, id="float32-2d"),
    pytest.param(torch.float64, (6, 5, 3, 3), 1e-12, id="float64-4d"),
    pytest.param(torch.float64, (6, 5), 1e-12, id="float64-2d"),
]


def _torch_bn(shape, **kwargs):
    return (nn.BatchNorm2d if len(shape) == 4 else nn.BatchNorm1d)(shape[1], **kwargs)


@pytest.mark.parametrize("dtype,shape,tol", CASES)
@pytest.mark.parametrize("momentum", [0.1, 0.3, None])
def test_matches_torch_batchnorm_train_and_eval(dtype, shape, tol, momentum, make_x, randomize_affine):
    ours = randomize_affine(create("batchnorm", shape[1], momentum=momentum, dtype=dtype))
    ref = randomize_affine(_torch_bn(shape, momentum=momentum, dtype=dtype))
    for seed in range(4):
        x = make_x(*shape, dtype=dtype, seed=seed)
        torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=tol)
        torch.testing.assert_close(ours.running_mean, ref.running_mean, rtol=0, atol=tol)
        torch.testing.assert_close(ours.running_var, ref.running_var, rtol=0, atol=tol)
        assert int(ours.num_batches_tracked) == int(ref.num_batches_tracked) == seed + 1
    ours.eval()
    ref.eval()
    x = make_x(*shape, dtype=dtype, seed=9)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=tol)


def test_cumulative_average_equals_the_mean_of_batch_statistics(make_x):
    layer = create("batchnorm", 4, momentum=None, dtype=torch.float64)
    xs = [make_x(5, 4, 3, 3, dtype=torch.float64, seed=s, shift=s) for s in range(5)]
    for x in xs:
        layer(x)
    means = torch.stack([x.mean(dim=(0, 2, 3)) for x in xs])
    unbiased_vars = torch.stack([x.transpose(0, 1).reshape(4, -1).var(dim=1, unbiased=True) for x in xs])
    torch.testing.assert_close(layer.running_mean, means.mean(0), rtol=0, atol=1e-12)
    torch.testing.assert_close(layer.running_var, unbiased_vars.mean(0), rtol=0, atol=1e-12)


def test_normalizes_with_biased_variance_and_stores_unbiased(make_x):
    layer = create("batchnorm", 3, momentum=1.0, affine=False, eps=0.0, dtype=torch.float64)
    x = make_x(4, 3, 2, 2, dtype=torch.float64)
    y = layer(x)
    flat = y.transpose(0, 1).reshape(3, -1)
    torch.testing.assert_close(flat.pow(2).mean(1), torch.ones(3, dtype=torch.float64), rtol=0, atol=1e-12)
    m = 16
    biased = x.transpose(0, 1).reshape(3, -1).var(dim=1, unbiased=False)
    torch.testing.assert_close(layer.running_var, biased * m / (m - 1), rtol=0, atol=1e-12)


def test_without_running_stats_uses_batch_statistics_in_eval_like_torch(make_x):
    ours = create("batchnorm", 5, track_running_stats=False).eval()
    ref = nn.BatchNorm2d(5, track_running_stats=False).eval()
    assert ours.running_mean is None and ours.running_var is None and ours.num_batches_tracked is None
    x = make_x(6, 5, 3, 3)
    torch.testing.assert_close(ours(x), ref(x), rtol=0, atol=1e-6)
    assert set(ours.state_dict()) == {"weight", "bias"}


def test_non_affine_layer_registers_weight_and_bias_as_none(make_x):
    layer = create("batchnorm", 5, affine=False)
    assert layer.weight is None and layer.bias is None and list(layer.parameters()) == []
    assert torch.isfinite(layer(make_x(3, 5))).all()


def test_batch_policy_uses_batch_statistics_in_eval_and_never_reads_running_state(make_x):
    layer = create("batchnorm", 5, policy="transductive").eval()
    with torch.no_grad():
        layer.running_mean.fill_(100.0)  # would dominate the output if it were read
    x = make_x(6, 5, 3, 3)
    torch.testing.assert_close(layer(x), nn.BatchNorm2d(5, track_running_stats=False)(x), rtol=0, atol=1e-6)


def test_support_policy_is_metabn_support_moments_normalize_the_query(make_x):
    layer = create("batchnorm", 5, policy="support", affine=False, dtype=torch.float64)
    support, query = make_x(5, 5, 3, 3, dtype=torch.float64), make_x(3, 5, 3, 3, dtype=torch.float64, seed=1)
    with collect(layer) as support_stats:
        layer(support)
    with using(layer, support_stats):
        y = layer(query)
    mean = support.mean(dim=(0, 2, 3), keepdim=True)
    var = support.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
    torch.testing.assert_close(y, (query - mean) / torch.sqrt(var + layer.eps), rtol=0, atol=1e-12)
    assert int(layer.num_batches_tracked) == 1  # the support forward updated running state, the query did not


def test_reset_running_stats_and_reset_parameters(make_x, randomize_affine):
    layer = randomize_affine(create("batchnorm", 4))
    layer(make_x(5, 4))
    layer.reset_running_stats()
    assert torch.equal(layer.running_mean, torch.zeros(4)) and torch.equal(layer.running_var, torch.ones(4))
    assert int(layer.num_batches_tracked) == 0
    assert not torch.equal(layer.weight, torch.ones(4))
    layer.reset_parameters()
    assert torch.equal(layer.weight, torch.ones(4)) and torch.equal(layer.bias, torch.zeros(4))


def test_load_batchnorm_state_reproduces_torch_eval_outputs(make_x, randomize_affine):
    ref = randomize_affine(nn.BatchNorm2d(4, eps=1e-3))
    for seed in range(3):
        ref(make_x(5, 4, 3, 3, seed=seed))
    ref.eval()
    layer = create("batchnorm", 4, eps=1e-3).eval()
    layer.load_batchnorm_state(ref)
    x = make_x(5, 4, 3, 3, seed=8)
    torch.testing.assert_close(layer(x), ref(x), rtol=0, atol=1e-6)
    assert int(layer.num_batches_tracked) == 3
    with pytest.raises(ValueError, match=r"channel counts differ"):
        create("batchnorm", 3).load_batchnorm_state(ref)
    with pytest.raises(ValueError, match="built with affine=False"):
        create("batchnorm", 4, affine=False).load_batchnorm_state(ref)
    with pytest.raises(TypeError, match="got GroupNorm"):
        layer.load_batchnorm_state(nn.GroupNorm(2, 4))


def test_transductive_batchnorm_equals_torch_without_running_stats_in_both_modes(make_x, randomize_affine):
    layer = randomize_affine(create("batchnorm_transductive", 5))
    ref = randomize_affine(nn.BatchNorm2d(5, track_running_stats=False))
    assert isinstance(layer, TransductiveBatchNorm) and isinstance(layer, BatchNorm)
    assert layer.policy == "transductive" and not layer.track_running_stats and layer.num_batches_tracked is None
    for mode in (True, False):
        layer.train(mode)
        ref.train(mode)
        x = make_x(6, 5, 3, 3, seed=int(mode))
        torch.testing.assert_close(layer(x), ref(x), rtol=0, atol=1e-6)


def test_transductive_batchnorm_policy_is_fixed(make_x):
    with pytest.raises(ValueError, match=r"always uses policy 'transductive'.*got policy='support'"):
        create("batchnorm_transductive", 4, policy="support")
    layer = create("batchnorm_transductive", 4, policy="transductive")
    with pytest.raises(ValueError, match="always uses policy 'transductive'"):
        layer.policy = "running"
    set_policy(layer, "support")  # set_policy leaves fixed-policy layers alone
    assert layer.policy == "transductive"


def test_transductive_batchnorm_outputs_depend_on_the_other_queries(make_x):
    layer = create("batchnorm_transductive", 4).eval()
    x = make_x(6, 4, 3, 3)
    assert not torch.allclose(layer(x)[:2], layer(x[:2]), atol=1e-3)
