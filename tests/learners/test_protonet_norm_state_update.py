"""ProtoNet's ``norm_state_update``: ``forward`` (state updated in every training forward) vs ``meta_batch``.

``meta_batch`` is what a distributed meta-step needs (docs/distributed.md): every episode of the meta-batch reads
the same state, and one update from the episodes' merged statistics follows, so the ranks' gathered statistics
give the single-process state.
"""

from __future__ import annotations

import pytest
import torch

import fewshot.norms as norms
from fewshot.learners.base import syncing_norm_stats
from fewshot.learners.protonet import ProtoNet
from fewshot.norms.state import norm_layers


class _Capture:
    """A sync that keeps the statistics handed to it and hands back none (so no state update is made)."""

    def __init__(self, parts: list) -> None:
        self.parts = parts

    def gather(self, parts: list) -> list:
        self.parts.extend(parts)
        return []

    def joined(self, module):  # noqa: ANN001, ANN201 - unused by ProtoNet
        raise AssertionError("ProtoNet makes no joined pass")


@pytest.mark.parametrize("norm", ["batchnorm", "swbn"])
@pytest.mark.parametrize("policy", ["running", "support"])
def test_meta_batch_update_is_one_update_from_the_merged_statistics(tiny_backbone, episode_factory, norm, policy):
    kwargs = {"group_size": 4} if norm == "swbn" else {}
    torch.manual_seed(0)
    learner = ProtoNet(tiny_backbone(norm=norm, **kwargs), norm_state_update="meta_batch")
    reference = ProtoNet(tiny_backbone(norm=norm, **kwargs), norm_state_update="meta_batch")
    reference.load_state_dict(learner.state_dict())
    episodes = [episode_factory(s) for s in range(3)]
    loss, _ = learner.meta_loss(episodes, policy=policy)
    loss.backward()  # the state committed after the forwards leaves the backward valid
    for layer in norm_layers(learner):
        assert int(layer.num_batches_tracked) == 1
    # Each episode alone at the unchanged state: its statistics are captured and no update is made (the gatherer
    # hands back none), so the reference keeps the initial state for every episode.
    parts, losses = [], []
    for ep in episodes:
        with syncing_norm_stats(_Capture(parts)):
            losses.append(reference.meta_loss([ep], policy=policy)[0])
    assert all(int(layer.num_batches_tracked) == 0 for layer in norm_layers(reference))
    torch.testing.assert_close(loss, torch.stack(losses).mean())  # every episode read the same state
    merged = norms.merge(reference, parts)
    expected = norms.next_state(reference, merged)
    state = dict(learner.named_buffers())
    assert expected and all(torch.allclose(state[k], v, rtol=1e-5, atol=1e-6) for k, v in expected.items())


def test_forward_update_is_the_default_and_bad_values_are_refused(tiny_backbone, episode_factory):
    torch.manual_seed(0)
    learner = ProtoNet(tiny_backbone())
    assert learner.norm_state_update == "forward"
    learner.meta_loss([episode_factory(s) for s in range(3)])
    assert all(int(layer.num_batches_tracked) == 3 for layer in norm_layers(learner))  # one per episode
    with pytest.raises(ValueError, match="norm_state_update must be one of 'forward', 'meta_batch', got 'task'"):
        ProtoNet(tiny_backbone(), norm_state_update="task")
