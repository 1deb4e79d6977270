"""``convert``: BatchNorm models to every registered layer; what is carried, copied and refused."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.errors import UnknownNameError
from fewshot.norms import NORM_LAYERS, NormLayer, convert, create, names

DT = torch.float64
REPRODUCING = [n for n in names() if NORM_LAYERS.get(n).reproduces_bn_after_convert]


@pytest.fixture
def bn_model(make_x, randomize_affine):
    """A trained-looking float64 BN model in eval mode: BatchNorm2d (affine and not) and BatchNorm1d."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.BatchNorm2d(4, affine=False, eps=1e-3),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 6),
        nn.BatchNorm1d(6, momentum=None),
    ).to(DT)
    randomize_affine(model[1], seed=2)
    randomize_affine(model[7], seed=3)
    for seed in range(3):
        model(make_x(5, 1, 3, 3, dtype=DT, seed=seed))
    return model.eval()


def test_registry_marks_batchnorm_as_reproducing_and_per_sample_layers_as_not():
    assert "batchnorm" in REPRODUCING
    for name in ("batchnorm_transductive", "tasknorm", "instancenorm", "layernorm", "groupnorm"):
        assert name not in REPRODUCING


@pytest.mark.parametrize("name", REPRODUCING)
def test_converted_model_reproduces_bn_outputs_in_eval_mode(name, bn_model, make_x):
    x = make_x(4, 1, 3, 3, dtype=DT, seed=9)
    expected = bn_model(x)
    converted = convert(bn_model, name)
    assert not converted.training
    tol = 1e-12 if name == "batchnorm" else 1e-6  # whitening layers: to their solver's tolerance
    torch.testing.assert_close(converted(x), expected, rtol=0, atol=tol)


@pytest.mark.parametrize("name", names())
def test_every_layer_converts_and_copies_the_affine_parameters(name, bn_model, make_x):
    converted = convert(bn_model, name)
    for i in (1, 4, 7):
        new, old = converted[i], bn_model[i]
        assert isinstance(new, NORM_LAYERS.get(name))
        assert new.eps == old.eps and new.affine == old.affine and new.training == old.training
        assert new.momentum == old.momentum or not new.track_running_stats
        if old.affine:
            assert torch.equal(new.weight, old.weight) and new.weight is not old.weight
            assert new.weight.dtype == DT
    if converted[7].track_running_stats:
        assert int(converted[7].num_batches_tracked) == 3
    converted.train()
    assert torch.isfinite(converted(make_x(5, 1, 3, 3, dtype=DT))).all()


def test_the_input_model_is_not_modified_and_nothing_is_shared(bn_model):
    converted = convert(bn_model, "batchnorm")
    assert type(bn_model[1]) is nn.BatchNorm2d and converted is not bn_model
    with torch.no_grad():
        converted[1].weight.add_(1.0)
        converted[1].running_mean.add_(1.0)
        converted[0].weight.add_(1.0)
    assert not torch.equal(bn_model[1].weight, converted[1].weight)
    assert not torch.equal(bn_model[1].running_mean, converted[1].running_mean)
    assert not torch.equal(bn_model[0].weight, converted[0].weight)


def test_a_batchnorm_root_returns_a_new_root():
    bn = nn.BatchNorm2d(3, eps=1e-4, momentum=0.2).train()
    new = convert(bn, "groupnorm", groups=3)
    assert type(new).__name__ == "GroupNorm" and new.groups == 3 and new.eps == 1e-4 and new.training


def test_kwargs_override_carried_options_and_norm_layers_convert_with_their_policy(bn_model, make_x):
    support_model = convert(bn_model, "batchnorm", policy="support", eps=1e-2)
    assert support_model[1].policy == "support" and support_model[1].eps == 1e-2
    tasknorm_model = convert(support_model, "tasknorm")  # NormLayer sources: policy carried over
    assert tasknorm_model[1].policy == "support" and torch.equal(tasknorm_model[1].weight, bn_model[1].weight)
    tbn_model = convert(support_model, "batchnorm_transductive")  # fixed policy wins over the carried one
    assert tbn_model[1].policy == "transductive"


class _MyBatchNorm(nn.BatchNorm2d):
    pass


@pytest.mark.parametrize(
    "layer",
    [
        nn.BatchNorm3d(4),
        nn.SyncBatchNorm(4),
        nn.LazyBatchNorm2d(),
        nn.InstanceNorm2d(4),
        nn.GroupNorm(2, 4),
        nn.LayerNorm(4),
        _MyBatchNorm(4),
    ],
    ids=lambda m: type(m).__name__,
)
def test_unhandled_norm_types_raise_naming_path_and_type(layer):
    model = nn.Sequential(nn.Conv2d(1, 4, 1), nn.Sequential(nn.ReLU(), layer))
    with pytest.raises(TypeError, match=rf"does not handle {type(layer).__name__} at '1\.1'"):
        convert(model, "batchnorm")


def test_unknown_target_name_lists_close_matches(bn_model):
    with pytest.raises(UnknownNameError, match="did you mean 'groupnorm'"):
        convert(bn_model, "group_nrom")


def test_non_affine_source_into_affine_target_gets_identity_affine():
    layer = convert(nn.BatchNorm2d(3, affine=False), "batchnorm", affine=True)
    assert isinstance(layer, NormLayer) and torch.equal(layer.weight, torch.ones(3))
    assert torch.equal(layer.bias, torch.zeros(3))
    assert isinstance(create("batchnorm", 3), NormLayer)
