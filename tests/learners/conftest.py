"""Fixtures for the learner tests: synthetic few-shot tasks and a tiny conv backbone.

The synthetic world: each class has a random vector of ``SIGNAL`` channel levels; an image holds those levels
(plus pixel noise) in its first ``SIGNAL`` channels and a large per-image random offset (the nuisance) in its
last ``NUISANCE`` channels. A random network mixes both, so the nuisance dominates and an untrained learner is
near chance; a learner that meta-learns to ignore the nuisance channels classifies new classes well.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fewshot.norms as norms
from episodes.episode import Episode

SIGNAL, NUISANCE, SIZE = 4, 4, 8
CHANNELS = SIGNAL + NUISANCE


def make_episode(
    seed: int,
    *,
    n_way: int = 5,
    n_shot: int = 1,
    n_query: int = 5,
    world: int = 0,
    n_classes: int = 50,
    size: int = SIZE,
    dtype: torch.dtype = torch.float32,
) -> Episode:
    """A class-major ``n_way``-way episode of ``size``×``size`` images from synthetic world ``world``."""
    levels = torch.randn(n_classes, SIGNAL, generator=torch.Generator().manual_seed(1000 + world))
    g = torch.Generator().manual_seed(seed)
    classes = torch.randperm(n_classes, generator=g)[:n_way]

    def draw(k: int) -> tuple[Tensor, Tensor]:
        n = n_way * k
        x = torch.empty(n, CHANNELS, size, size)
        x[:, :SIGNAL] = levels[classes].repeat_interleave(k, 0)[:, :, None, None]
        x[:, SIGNAL:] = 3.0 * torch.randn(n, NUISANCE, 1, 1, generator=g)
        x += 0.5 * torch.randn(x.shape, generator=g)
        return x.to(dtype), torch.arange(n_way).repeat_interleave(k)

    (sx, sy), (qx, qy) = draw(n_shot), draw(n_query)
    return Episode(
        sx, sy, qx, qy,
        class_ids=tuple(f"class{int(c):02d}" for c in classes),
        support_ids=tuple(f"s{i}" for i in range(sy.shape[0])),
        query_ids=tuple(f"q{i}" for i in range(qy.shape[0])),
        index=seed,
    )  # fmt: skip


class TinyBackbone(nn.Module):
    """conv 3×3 → norm → ReLU → conv 3×3 stride 2 → norm → ReLU → spatial mean: ``(N, C, 8, 8)`` → ``(N, hidden)``."""

    def __init__(self, in_channels: int = CHANNELS, hidden: int = 16, norm: str = "batchnorm", **norm_kwargs) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.conv1 = nn.Conv2d(in_channels, hidden, 3, padding=1)
        self.norm1 = norms.create(norm, hidden, **norm_kwargs)
        self.conv2 = nn.Conv2d(hidden, hidden, 3, padding=1, stride=2)
        self.norm2 = norms.create(norm, hidden, **norm_kwargs)

    def forward(self, x: Tensor) -> Tensor:
        x = F.relu(self.norm1(self.conv1(x)))
        return F.relu(self.norm2(self.conv2(x))).mean(dim=(2, 3))

    def out_features(self, image_size: int) -> int:
        return self.conv2.out_channels


@pytest.fixture
def episode_factory() -> Callable[..., Episode]:
    """``make_episode(seed, *, n_way=5, n_shot=1, n_query=5, world=0, size=8, dtype=float32) -> Episode``."""
    return make_episode


@pytest.fixture
def tiny_backbone() -> Callable[..., TinyBackbone]:
    """``TinyBackbone(in_channels=8, hidden=16, norm="batchnorm", **norm_kwargs)`` (seed it yourself)."""
    return TinyBackbone


def query_accuracy(learner: nn.Module, policy: str, *, world: int, n: int = 40) -> float:
    """Mean accuracy of ``learner.predict`` on ``n`` fresh 5-way 1-shot 5-query episodes of ``world``."""
    accs = []
    for i in range(n):
        ep = make_episode(10**6 + i, world=world)
        accs.append((learner.predict(ep, policy=policy).argmax(-1) == ep.query_y).double().mean().item())
    return sum(accs) / len(accs)


@pytest.fixture
def evaluate() -> Callable[..., float]:
    """``evaluate(learner, policy, *, world, n=40) -> mean query accuracy`` on fresh episodes."""
    return query_accuracy


def state_snapshot(module: nn.Module) -> dict[str, Tensor]:
    """Clones of every parameter and buffer of ``module`` (by name)."""
    return {k: v.detach().clone() for k, v in module.state_dict(keep_vars=True).items() if isinstance(v, Tensor)}


@pytest.fixture
def snapshot() -> Callable[[nn.Module], dict[str, Tensor]]:
    """``snapshot(module) -> {name: clone}`` of all parameters and buffers."""
    return state_snapshot


@pytest.fixture(autouse=True)
def single_thread():
    """Learner tests use tiny tensors: one intra-op thread is faster (and robust on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def num_threads():
    """``num_threads(n)``: use ``n`` intra-op threads for the rest of the test."""
    return torch.set_num_threads
