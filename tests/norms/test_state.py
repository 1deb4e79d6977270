"""``frozen_stats``, ``set_policy`` and the statistics flow (``collect``/``using``) on whole models."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fewshot.norms import batch_dependent, collect, create, frozen_stats, set_policy, using
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


# ------------------------------------------------------------------ collect / using
def test_support_statistics_are_values_collected_by_name_and_never_stored_on_the_modules(make_x):
    model = _model()
    set_policy(model, "support")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with collect(model) as support:
        model(make_x(5, 2, 3, 3))
    assert sorted(support) == ["1", "3", "5"]  # every layer's statistics, by module path
    assert int(support["1"].count) == 5 * 3 * 3
    assert model.state_dict().keys() == before.keys()
    with using(model, support):
        one = model(make_x(1, 2, 3, 3, seed=1))
        again = model(make_x(1, 2, 3, 3, seed=1))
    assert torch.equal(one, again)
    with pytest.raises(RuntimeError, match="policy='support' but got a forward with no support statistics"):
        model(make_x(1, 2, 3, 3, seed=1))  # nothing left behind from the previous task
    with using(model, {}), pytest.raises(RuntimeError, match="statistics given to `using` hold none for it"):
        model(make_x(1, 2, 3, 3, seed=1))


def test_collect_and_using_restore_the_outer_flow_on_error(make_x):
    model = _model()
    set_policy(model, "support")
    with pytest.raises(ZeroDivisionError), collect(model) as support:
        model(make_x(5, 2, 3, 3))
        raise ZeroDivisionError
    assert "1" in support
    with pytest.raises(RuntimeError, match="no support statistics"):
        model(make_x(1, 2, 3, 3))


# ------------------------------------------------------------------ set_policy
def test_set_policy_as_a_plain_setter_persists():
    model = _model()
    change = set_policy(model, "transductive")
    assert isinstance(change, PolicyChange)
    assert [model[i].policy for i in (1, 3, 5)] == ["transductive"] * 3


def test_set_policy_as_a_context_manager_restores_previous_policies():
    model = _model()
    model[3].policy = "support"
    with set_policy(model, "transductive"):
        assert model[1].policy == model[3].policy == "transductive"
        with set_policy(model, "running"):
            assert model[3].policy == "running"
        assert model[3].policy == "transductive"
    assert model[1].policy == "running" and model[3].policy == "support"


def test_set_policy_restore_method_and_fixed_policy_layers():
    model = nn.Sequential(create("batchnorm", 3), create("batchnorm_transductive", 3))
    change = set_policy(model, "support")
    assert model[0].policy == "support" and model[1].policy == "transductive"
    change.restore()
    assert model[0].policy == "running" and model[1].policy == "transductive"


def test_set_policy_validates_the_policy_and_refuses_native_batchnorm():
    with pytest.raises(
        ValueError, match=r"set_policy: policy must be one of 'running', 'support', 'transductive', got 'batch'"
    ):
        set_policy(_model(), "batch")
    native = nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4))
    with pytest.raises(TypeError, match=r"cannot control torch layer BatchNorm2d at '1'.*convert the model first"):
        set_policy(native, "transductive")
    with pytest.raises(ValueError, match="policy must be one of"):
        create("batchnorm", 3).policy = "query"


# ------------------------------------------------------------------ batch_dependent
def test_batch_dependent_says_whether_a_forward_now_mixes_rows_through_batch_statistics():
    bn = create("batchnorm", 4)
    assert batch_dependent(bn)  # training mode: the batch's statistics
    assert not batch_dependent(bn.eval())  # running statistics
    assert batch_dependent(create("batchnorm", 4, track_running_stats=False).eval())
    with set_policy(bn, "transductive"):
        assert batch_dependent(bn)
    assert not batch_dependent(bn)  # the policy is restored
    tasknorm = create("tasknorm", 4).eval()
    assert batch_dependent(tasknorm)  # no running state: its context is the batch it is given
    set_policy(tasknorm, "support")
    with collect(tasknorm) as stats:
        assert batch_dependent(tasknorm)  # the support forward: its own statistics
        tasknorm(torch.randn(5, 4, 3, 3))
    with using(tasknorm, stats):
        assert not batch_dependent(tasknorm)  # each query with the support's context and its own moments
    assert not batch_dependent(tasknorm)  # a support-policy forward with no statistics raises instead
    assert not batch_dependent(create("groupnorm", 4, groups=2))  # per sample, in any mode
    assert batch_dependent(nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4)))  # torch BN in training
    assert not batch_dependent(nn.Sequential(nn.Conv2d(2, 4, 1), nn.BatchNorm2d(4)).eval())
    assert batch_dependent(nn.BatchNorm2d(4, track_running_stats=False).eval())
