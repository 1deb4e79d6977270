"""Which learner forwards take the fused normalization kernels (fewshot.norms.kernels), checked with a spy.

Second-order MAML differentiates through its inner ``torch.func.grad``, so its inner forwards must take the
exact primitive-op path; the query forward and the state update run in plain autograd / ``no_grad`` and may be
fused. First-order MAML and ProtoNet are fused everywhere in training.
"""

from __future__ import annotations

import pytest
import torch

from fewshot import learners

N_NORM_LAYERS = 2  # TinyBackbone: norm1, norm2
OPTIONS = {"batchnorm": {}, "swbn": {"group_size": 3}}


def _maml(backbone, **kwargs):
    return learners.create("maml", backbone, n_way=5, image_size=8, head_init="default", **kwargs)


@pytest.mark.parametrize("norm", ["batchnorm", "swbn"])
def test_second_order_maml_inner_loop_takes_the_exact_path(tiny_backbone, episode_factory, fused_calls, norm):
    torch.manual_seed(0)
    learner = _maml(tiny_backbone(hidden=6, norm=norm, **OPTIONS[norm]), inner_steps=2)
    episodes = [episode_factory(s, n_shot=2, n_query=2) for s in (1, 2)]
    learner.meta_loss(episodes, policy="transductive")[0].backward()
    assert not [call for call in fused_calls if call.under_grad]
    # fused: each task's query forward (plain autograd) and the one no-grad state update on all supports
    assert len(fused_calls) == N_NORM_LAYERS * (len(episodes) + 1)


@pytest.mark.parametrize("norm", ["batchnorm", "swbn"])
def test_first_order_maml_inner_loop_takes_the_fused_path(tiny_backbone, episode_factory, fused_calls, norm):
    torch.manual_seed(0)
    learner = _maml(tiny_backbone(hidden=6, norm=norm, **OPTIONS[norm]), inner_steps=2, first_order=True)
    episodes = [episode_factory(s, n_shot=2, n_query=2) for s in (1, 2)]
    learner.meta_loss(episodes, policy="transductive")[0].backward()
    inner = [call for call in fused_calls if call.under_grad]
    assert len(inner) == N_NORM_LAYERS * 2 * len(episodes)  # every inner step of every task
    assert len(fused_calls) == len(inner) + N_NORM_LAYERS * (len(episodes) + 1)


@pytest.mark.parametrize("norm", ["batchnorm", "swbn"])
def test_protonet_training_takes_the_fused_path(tiny_backbone, episode_factory, fused_calls, norm):
    torch.manual_seed(0)
    learner = learners.create("protonet", tiny_backbone(norm=norm))
    learner.meta_loss([episode_factory(0)], policy="running")[0].backward()
    assert [(call.shape, call.under_grad) for call in fused_calls] == [((30, 16, 8, 8), False), ((30, 16, 4, 4), False)]
