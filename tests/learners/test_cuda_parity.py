"""Every registered norm inside ProtoNet and MAML computes the same step on CUDA as on the CPU.

From the same weights and the same episode: the loss, every parameter's gradient, the predictions made after
the optimizer step, and every parameter and buffer (the norm state) after the step. CUDA runs in fp32 with TF32
off (``precision: fp32``); tolerance ``rtol = atol = 1e-4`` (float32 reductions in another order, cuDNN
convolution algorithms). The CUDA test is skipped, saying so, where torch has no CUDA device. The same
comparison of float32 against float64 on the CPU runs everywhere and bounds the float32 rounding itself
(tolerance ``rtol = atol = 2e-3``, looser: float64 drops all of float32's rounding, not just its order).
MAML adapts with inner lr 0.02: larger steps amplify float32 rounding through the per-sample norms (group,
instance) on 4x4 maps beyond any fixed tolerance (0.1 gives logit differences of 0.04 against float64).
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fewshot.norms as norms
from fewshot.learners import create as create_learner
from fewshot.numerics import set_precision

NORMS = norms.names()
LEARNERS = ("protonet", "maml")
CUDA_TOL = {"rtol": 1e-4, "atol": 1e-4}
FP64_TOL = {"rtol": 2e-3, "atol": 2e-3}


def _learner(name: str, norm: str, tiny_backbone) -> nn.Module:  # noqa: ANN001
    torch.manual_seed(0)
    backbone = tiny_backbone(norm=norm)
    if name == "maml":
        return create_learner("maml", backbone, n_way=5, image_size=8, inner_lr=0.02, inner_steps=2)
    return create_learner("protonet", backbone)


def _step(learner: nn.Module, episode, device: torch.device, dtype: torch.dtype) -> dict[str, object]:  # noqa: ANN001
    """One training step on ``device`` in ``dtype``; everything it produced, as float64 CPU tensors."""
    learner = copy.deepcopy(learner).to(device=device, dtype=dtype)
    episode = episode.to(device, dtype)
    optimizer = torch.optim.SGD(learner.parameters(), lr=0.05)
    loss, _ = learner.meta_loss([episode], policy="running")
    loss.backward()
    grads = {k: p.grad.detach().double().cpu() for k, p in learner.named_parameters() if p.grad is not None}
    optimizer.step()
    with torch.no_grad():
        predictions = learner.predict(episode, policy="running").double().cpu()
    state = {k: v.detach().double().cpu() for k, v in learner.state_dict().items() if v.is_floating_point()}
    return {"loss": loss.detach().double().cpu(), "grads": grads, "predictions": predictions, "state": state}


def _assert_same(a: dict[str, object], b: dict[str, object], tol: dict[str, float]) -> None:
    torch.testing.assert_close(a["loss"], b["loss"], **tol, msg=lambda m: f"loss: {m}")
    assert a["grads"].keys() == b["grads"].keys() and a["grads"]
    for key in a["grads"]:
        torch.testing.assert_close(a["grads"][key], b["grads"][key], **tol, msg=lambda m, k=key: f"grad {k}: {m}")
    torch.testing.assert_close(a["predictions"], b["predictions"], **tol, msg=lambda m: f"predictions: {m}")
    for key in a["state"]:
        torch.testing.assert_close(a["state"][key], b["state"][key], **tol, msg=lambda m, k=key: f"state {k}: {m}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: the CUDA-vs-CPU parity needs a GPU")
@pytest.mark.parametrize("learner_name", LEARNERS)
@pytest.mark.parametrize("norm", NORMS)
def test_cuda_step_equals_cpu_step(norm, learner_name, tiny_backbone, episode_factory):
    set_precision("fp32")  # TF32 off
    learner = _learner(learner_name, norm, tiny_backbone)
    episode = episode_factory(3, n_way=5, n_shot=2, n_query=4)
    cpu = _step(learner, episode, torch.device("cpu"), torch.float32)
    cuda = _step(learner, episode, torch.device("cuda"), torch.float32)
    _assert_same(cuda, cpu, CUDA_TOL)


@pytest.mark.parametrize("learner_name", LEARNERS)
@pytest.mark.parametrize("norm", NORMS)
def test_fp32_step_equals_fp64_step(norm, learner_name, tiny_backbone, episode_factory):
    learner = _learner(learner_name, norm, tiny_backbone)
    episode = episode_factory(3, n_way=5, n_shot=2, n_query=4)
    fp32 = _step(learner, episode, torch.device("cpu"), torch.float32)
    fp64 = _step(learner, episode, torch.device("cpu"), torch.float64)
    _assert_same(fp32, fp64, FP64_TOL)
