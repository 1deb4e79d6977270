"""Tests of the leak check (query set scored whole vs one example at a time)."""

import dataclasses

import pytest
import torch

from fewshot.evaluation.leak import check_leak, single_query_episode


def test_single_query_episode_keeps_support_and_one_query(episodes):
    ep = episodes[0]
    one = single_query_episode(ep, 5)
    assert torch.equal(one.support_x, ep.support_x) and torch.equal(one.query_x, ep.query_x[5:6])
    assert one.query_y.tolist() == [ep.query_y[5].item()] and one.query_ids == (ep.query_ids[5],)


@pytest.mark.parametrize("policy", ["running", "support"])
def test_non_transductive_policies_have_zero_difference(episodes, policy, centroid_learner):
    report = check_leak(centroid_learner(), episodes, policy=policy, n_episodes=4)
    assert report.n_episodes == 4 and report.n_queries == 4 * 12
    assert report.max_abs_logit_diff <= report.tolerance
    assert report.acc_diff == pytest.approx(0.0) and report.changed_predictions == 0
    assert not report.transductive and report.verdict.startswith("non-transductive")


def test_transductive_policy_is_detected(episodes, centroid_learner):
    report = check_leak(centroid_learner(), episodes, policy="transductive", n_episodes=50)
    assert report.n_episodes == 6  # capped at the size of the set
    assert report.max_abs_logit_diff > 1.0
    assert report.transductive
    assert report.verdict.startswith("transductive: predictions depend on other queries")
    # one query alone is centred on itself: it sits at the origin, so accuracy collapses
    assert report.acc_whole > report.acc_single


def test_a_learner_that_cannot_score_one_query_is_transductive(episodes, centroid_learner):
    report = check_leak(centroid_learner(min_batch=2), episodes, policy="transductive")
    assert report.transductive and report.max_abs_logit_diff is None and report.acc_single is None
    assert report.n_episodes == 1 and report.single_query_error == "got a batch of 1 sample"
    assert "cannot even be scored on its own: got a batch of 1 sample" in report.verdict
    with pytest.raises(ValueError, match="batch statistics need 2"):  # a non-transductive policy must manage
        check_leak(centroid_learner(min_batch=2), episodes, policy="running")


def test_leak_check_rejects_state_changes_and_bad_arguments(episodes, centroid_learner):
    with pytest.raises(RuntimeError, match="the leak check .* changed the model state"):
        check_leak(centroid_learner(mutate=True), episodes)
    with pytest.raises(ValueError, match="n_episodes must be >= 1"):
        check_leak(centroid_learner(), episodes, n_episodes=0)


@pytest.fixture
def one_thread():
    """Tiny convolutions run fastest on one thread (and do not fight other processes for the cores)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.mark.parametrize("norm", ["batchnorm", "swbn"])
def test_protonet_leak_check_and_untouched_buffers(norm, episode_factory, one_thread):
    norms = pytest.importorskip("fewshot.norms")
    learners = pytest.importorskip("fewshot.learners")
    backbones = pytest.importorskip("fewshot.backbones")
    if norm not in norms.NORM_LAYERS:
        pytest.skip(f"norm {norm!r} is not registered yet")
    torch.manual_seed(0)
    learner = learners.create("protonet", backbones.create("conv4", in_channels=1, norm=norm, hidden=8))
    g = torch.Generator().manual_seed(1)

    def image_episode(i):
        ep = episode_factory(i, n_way=3, n_shot=2, n_query=3)
        return dataclasses.replace(
            ep, support_x=torch.rand(6, 1, 16, 16, generator=g), query_x=torch.rand(9, 1, 16, 16, generator=g)
        )

    episodes = [image_episode(i) for i in range(3)]
    for ep in episodes:  # a few training forwards so that running statistics are not at their initial values
        learner.meta_loss([ep], policy="running")
    before = {k: v.clone() for k, v in learner.state_dict().items()}
    assert any("running" in k for k in before)
    reports = {p: check_leak(learner, episodes, policy=p, n_episodes=3) for p in ("running", "support", "transductive")}
    after = learner.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert reports["running"].max_abs_logit_diff == 0.0 and not reports["running"].transductive
    assert reports["support"].max_abs_logit_diff == 0.0 and not reports["support"].transductive
    assert reports["transductive"].transductive and reports["transductive"].max_abs_logit_diff > 1e-3


def test_tasknorm_under_running_is_reported_transductive_not_an_error(episodes) -> None:
    # TaskNorm keeps no running state: under `running` its query context is the query batch (12 rows here, scored
    # unpadded), so predictions depend on the other queries; a query scored alone (one row, padded with its own
    # copies) must not raise.
    from torch import nn

    from fewshot import learners
    from fewshot.norms import create

    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(4, 8, 1), create("tasknorm", 8), nn.Flatten())
    report = check_leak(learners.create("protonet", backbone), episodes, policy="running", n_episodes=2)
    assert report.transductive and report.max_abs_logit_diff > 1e-4
