"""``frozen_stats``, ``task_phase`` and ``set_policy`` on whole models (NormLayers and native torch BN)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.norms import create, frozen_stats, set_policy, task_phase
from fewshot.norms.state import PolicyChange


def _model():
    return nn.Sequential(
        nn.Conv2d(2, 4, 1),
        create("batchnorm", 4),
        nn.ReLU(),
        create("tasknorm", 4),
        nn.Conv2d(4, 4, 1),
        create("groupnorm", 4, groups=2),
    )


# ------------------------------------------------------------------ frozen_stats
def test_frozen_stats_disables_updates_and_restores_them(make_x, snapshot, assert_buffers_equal):
    model = _model()
    before = snapshot(model)
    with frozen_stats(model) as inside:
        assert inside is model
        assert all(not m.update_stats for m in (model[1], model[3], model[5]))
        model(make_x(5, 2, 3, 3))
    assert_buffers_equal(model, before)
    assert all(m.update_stats for m in (model[1], model[3], model[5]))
    model(make_x(5, 2, 3, 3))
    assert int(model[1].num_batches_tracked) == 1  # updates resume after the block


def test_frozen_stats_outputs_equal_unfrozen_train_outputs(make_x):
    model, x = _model(), make_x(5, 2, 3, 3)
    with frozen_stats(model):
        frozen = model(x)
    assert torch.equal(frozen, model(x))


def test_frozen_stats_restores_on_error_and_nests():
    model = _model()
    model[1].update_stats = False  # a value set by the user is restored as it was
    with pytest.raises(KeyError), frozen_stats(model):
        raise KeyError("boom")
    assert model[1].update_stats is False and model[3].update_stats is True
    with frozen_stats(model):
        with frozen_stats(model[1]):
            assert not model[1].update_stats
        assert not model[1].update_stats and not model[3].update_stats  # inner exit keeps the outer freeze
    assert model[1].update_stats is False and model[3].update_stats is True


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_frozen_stats_freezes_native_torch_batchnorm_bitwise(mode, make_x, snapshot, assert_buffers_equal):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4), nn.Flatten(), nn.BatchNorm1d(36, momentum=None))
    model(make_x(5, 2, 3, 3, seed=1))  # non-trivial running statistics
    model.train(mode == "train")
    x = make_x(5, 2, 3, 3)
    before = snapshot(model)
    with frozen_stats(model):
        frozen = model(x)
        assert not model[1].track_running_stats
    assert_buffers_equal(model, before)
    assert model[1].track_running_stats and model[3].track_running_stats
    assert torch.equal(frozen, model(x))  # same outputs as an unfrozen forward in the same mode


def test_frozen_stats_refuses_instance_norm_with_running_stats():
    model = nn.Sequential(nn.Conv2d(2, 4, 1), nn.InstanceNorm2d(4, track_running_stats=True))
    with pytest.raises(TypeError, match=r"cannot freeze InstanceNorm2d at '1'.*track_running_stats=False"):
        with frozen_stats(model):
            pass
    with frozen_stats(nn.InstanceNorm2d(4)):  # without running stats there is nothing to freeze
        pass


# ------------------------------------------------------------------ task_phase
def test_task_phase_sets_and_restores_the_phase_of_every_layer():
    model = _model()
    with task_phase(model, "support"):
        assert [m.phase for m in (model[1], model[3], model[5])] == ["support"] * 3
        with task_phase(model, "query"):
            assert model[3].phase == "query"
        assert model[3].phase == "support"
    assert model[1].phase is None


def test_support_phase_caches_statistics_and_query_phase_exit_clears_them(make_x):
    model = _model()
    set_policy(model, "support")
    with task_phase(model, "support"):
        model(make_x(5, 2, 3, 3))
    assert model[1].support_stats is not None and model[3].support_stats is not None
    assert model[5].support_stats is None  # per-sample layers never cache
    assert "support_stats" not in str(model.state_dict().keys())
    with task_phase(model, "query"):
        model(make_x(1, 2, 3, 3, seed=1))
    assert model[1].support_stats is None and model[3].support_stats is None
    with task_phase(model, "query"), pytest.raises(RuntimeError, match="no cached support statistics"):
        model(make_x(1, 2, 3, 3, seed=1))  # no leak from the previous task


def test_entering_a_support_phase_clears_the_previous_cache(make_x):
    layer = create("batchnorm", 2, policy="support")
    with task_phase(layer, "support"):
        layer(make_x(4, 2))
    with task_phase(layer, "support"):
        assert layer.support_stats is None


def test_task_phase_rejects_unknown_phases():
    with pytest.raises(ValueError, match="expects phase 'support' or 'query', got 'train'"):
        with task_phase(_model(), "train"):
            pass


def test_task_phase_restores_on_error(make_x):
    model = _model()
    set_policy(model, "support")
    with pytest.raises(ZeroDivisionError), task_phase(model, "support"):
        model(make_x(5, 2, 3, 3))
        raise ZeroDivisionError
    assert model[1].phase is None and model[1].support_stats is not None  # the support cache survives


# ------------------------------------------------------------------ set_policy
def test_set_policy_as_a_plain_setter_persists():
    model = _model()
    change = set_policy(model, "batch")
    assert isinstance(change, PolicyChange)
    assert [model[i].policy for i in (1, 3, 5)] == ["batch"] * 3


def test_set_policy_as_a_context_manager_restores_previous_policies():
    model = _model()
    model[3].policy = "support"
    with set_policy(model, "batch"):
        assert model[1].policy == model[3].policy == "batch"
        with set_policy(model, "running"):
            assert model[3].policy == "running"
        assert model[3].policy == "batch"
    assert model[1].policy == "running" and model[3].policy == "support"


def test_set_policy_restore_method_and_fixed_policy_layers():
    model = nn.Sequential(create("batchnorm", 3), create("batchnorm_transductive", 3))
    change = set_policy(model, "support")
    assert model[0].policy == "support" and model[1].policy == "batch"
    change.restore()
    assert model[0].policy == "running" and model[1].policy == "batch"


def test_set_policy_validates_the_policy_and_refuses_native_batchnorm():
    with pytest.raises(ValueError, match=r"expects one of 'running', 'batch', 'support', got 'transductive'"):
        set_policy(_model(), "transductive")
    native = nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4))
    with pytest.raises(TypeError, match=r"cannot control torch layer BatchNorm2d at '1'.*convert the model first"):
        set_policy(native, "batch")
    with pytest.raises(ValueError, match="policy must be one of"):
        create("batchnorm", 3).policy = "query"
