"""Fixtures for the evaluation tests: synthetic episodes and toy learners with known behaviour."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from episodes.episode import Episode


def make_episode(index: int, n_way: int = 3, n_shot: int = 2, n_query: int = 4, dim: int = 4, seed: int = 0) -> Episode:
    """Gaussian blobs: class j is centred at 3·e_j; images are (dim, 1, 1) so they look like (C, H, W)."""
    g = torch.Generator().manual_seed(seed * 1000 + index)

    def draw(k: int) -> tuple[torch.Tensor, torch.Tensor]:
        y = torch.arange(n_way).repeat_interleave(k)
        centres = 3.0 * torch.eye(n_way, dim)
        x = centres[y] + torch.randn(n_way * k, dim, generator=g)
        return x.view(n_way * k, dim, 1, 1), y

    sx, sy = draw(n_shot)
    qx, qy = draw(n_query)
    return Episode(
        support_x=sx, support_y=sy, query_x=qx, query_y=qy,
        class_ids=tuple(f"c{j}" for j in range(n_way)),
        support_ids=tuple(f"s{i}" for i in range(sx.shape[0])),
        query_ids=tuple(f"q{i}" for i in range(qx.shape[0])),
        index=index,
    )  # fmt: skip


class CentroidLearner(nn.Module):
    """Nearest class mean on flattened inputs; ``transductive`` centres the query batch on its own mean.

    ``running`` and ``support`` score each query independently (support uses the support mean for centring),
    ``transductive`` subtracts the query batch mean from the queries (and the support mean from the support),
    so a query's logits depend on the other queries.
    """

    def __init__(self, mutate: bool = False, min_batch: int = 1) -> None:
        super().__init__()
        self.min_batch = min_batch  # like a batch-statistics norm layer refusing a batch of one sample
        self.register_buffer("offset", torch.zeros(1))
        self.scale = nn.Parameter(torch.ones(1))
        self.mutate = mutate

    def predict(self, episode: Episode, *, policy: str = "running") -> torch.Tensor:
        if self.mutate:
            self.offset += 1.0  # a broken learner: scoring changes a buffer
        s = episode.support_x.flatten(1)
        q = episode.query_x.flatten(1)
        if q.shape[0] < self.min_batch:
            raise ValueError(f"got a batch of {q.shape[0]} sample; batch statistics need {self.min_batch}")
        if policy == "transductive":
            s, q = s - s.mean(0), q - q.mean(0)
        elif policy == "support":
            mu = s.mean(0)
            s, q = s - mu, q - mu
        onehot = nn.functional.one_hot(episode.support_y, episode.n_way).to(s.dtype)
        protos = onehot.T @ s / onehot.sum(0)[:, None]
        return -self.scale * torch.cdist(q, protos) ** 2


@pytest.fixture
def episodes() -> list[Episode]:
    return [make_episode(i) for i in range(6)]


@pytest.fixture
def centroid_learner() -> type[CentroidLearner]:
    """The :class:`CentroidLearner` class (call it, optionally with ``mutate=True``)."""
    return CentroidLearner


@pytest.fixture
def episode_factory():
    """:func:`make_episode`."""
    return make_episode
