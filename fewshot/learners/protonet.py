"""Prototypical Networks: classify queries by their distance to the class means of the support embeddings.

Snell, Swersky, Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS 2017, arXiv 1703.05175.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import fewshot.norms as norms
from episodes.episode import Episode
from fewshot.learners._registry import LEARNERS
from fewshot.learners.base import (
    Learner,
    accuracy,
    check_episode,
    check_train_policy,
    gather_episode_stats,
    predict_norm_policy,
    rowwise,
)
from fewshot.norms.flow import NormStats
from fewshot.norms.policy import Policy
from fewshot.norms.state import norm_layers

__all__ = ["ProtoNet"]

_DISTANCES = ("euclidean", "cosine")
_NORM_STATE_UPDATES = ("forward", "meta_batch")


@LEARNERS.register("protonet")
class ProtoNet(Learner):
    """Prototypical Networks (Snell et al., NeurIPS 2017, arXiv 1703.05175).

    A class prototype is the mean support embedding of the class, computed as ``one_hot(support_y, n_way)ᵀ @ z``
    divided by the class counts (independent of the order of the support rows). Query logits are the negative
    squared Euclidean distances to the prototypes (the paper's choice), or with ``distance="cosine"`` the cosine
    similarities divided by a temperature (learnable by default, as the scale of the cosine classifier of
    Gidaris & Komodakis, "Dynamic Few-Shot Visual Learning without Forgetting", CVPR 2018, arXiv 1804.09458).

    Normalization statistics. In ``meta_loss`` with policy ``"running"`` or ``"transductive"``, support and query go
    through **one** forward (the reference implementation's choice: in training, batch statistics over the
    whole episode); with ``"support"``, the support forward's statistics are collected (``fewshot.norms.collect``)
    and passed to the query forward (``fewshot.norms.using``). ``predict``: ``"transductive"`` is that
    same single forward with batch statistics; ``"support"`` as in training; ``"running"`` runs support and query
    separately in eval mode with running statistics. Under ``"support"`` and ``"running"`` each query's logits
    depend on that query alone, bitwise: scoring the query set whole or one image at a time gives equal logits
    (see :func:`fewshot.learners.base.rowwise`), except for layers without running state, whose ``"running"`` context
    is the batch at hand (TaskNorm: the query set; ``fewshot.norms.batch_dependent``).

    Args:
        backbone: feature extractor, ``(N, C, H, W)`` → ``(N, D)``.
        distance: ``"euclidean"`` (squared, default) or ``"cosine"``.
        temperature: cosine only: logits are ``cos / temperature`` (default 0.1, i.e. a scale of 10).
        learn_temperature: cosine only: learn ``log(temperature)`` as a parameter (default) or keep it fixed.
        channels_last: convert input images to the channels-last memory format.
        n_way: unused (prototypes adapt to each episode's way); accepted so that every learner can be built
            with the same call.
        image_size: unused; accepted for the same reason.
        in_channels: unused; accepted for the same reason.
        norm_state_update: when ``meta_loss`` updates the norm layers' state (running moments, SWBN's ``W``):
            ``"forward"`` (default): in every training forward, PyTorch's BatchNorm semantics (episode ``i+1`` of
            a meta-batch reads the state episode ``i`` left); ``"meta_batch"``: every episode of the meta-batch
            reads the same state, and one update from their statistics merged (Chan's rule) follows the
            meta-batch; the only choice a distributed meta-step accepts (docs/distributed.md).

    Example:
        >>> import fewshot.backbones
        >>> from episodes.episode import Episode
        >>> def random_episode(n_shot, n_query):  # 5 classes of random 28x28 images
        ...     ids = lambda k: tuple(f"img{i}" for i in range(5 * k))
        ...     label = lambda k: torch.arange(5).repeat_interleave(k)
        ...     x = lambda k: torch.rand(5 * k, 1, 28, 28)
        ...     support, query = (x(n_shot), label(n_shot)), (x(n_query), label(n_query))
        ...     return Episode(*support, *query, tuple("abcde"), ids(n_shot), ids(n_query), 0)
        >>> episode = random_episode(n_shot=5, n_query=15)
        >>> learner = ProtoNet(fewshot.backbones.create("conv4"))
        >>> loss, metrics = learner.meta_loss([episode])
        >>> learner.predict(episode, policy="running").shape
        torch.Size([75, 5])
    """

    def __init__(
        self,
        backbone: nn.Module,
        *,
        distance: str = "euclidean",
        temperature: float | None = None,
        learn_temperature: bool = True,
        channels_last: bool = False,
        n_way: int | None = None,
        image_size: int | None = None,
        in_channels: int | None = None,
        norm_state_update: str = "forward",
    ) -> None:
        super().__init__(backbone, channels_last=channels_last)
        if norm_state_update not in _NORM_STATE_UPDATES:
            raise ValueError(
                f"protonet norm_state_update must be one of {', '.join(map(repr, _NORM_STATE_UPDATES))}, got "
                f"{norm_state_update!r}; 'forward' updates norm state in every training forward, 'meta_batch' once "
                "per meta-step from the meta-batch's merged statistics"
            )
        self.norm_state_update = norm_state_update
        if distance not in _DISTANCES:
            raise ValueError(f"protonet distance must be one of {', '.join(map(repr, _DISTANCES))}, got {distance!r}")
        self.distance = distance
        self.log_temperature: nn.Parameter | None = None
        self._fixed_log_temperature = 0.0
        if distance == "euclidean":
            if temperature is not None:
                raise ValueError(
                    f"protonet temperature applies to distance='cosine' only, got temperature={temperature!r} with "
                    "distance='euclidean'; remove it or set distance='cosine'"
                )
            return
        temperature = 0.1 if temperature is None else temperature
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise ValueError(f"protonet temperature must be a number > 0, got {temperature!r}")
        if learn_temperature:
            self.log_temperature = nn.Parameter(torch.tensor(math.log(temperature)))
        else:
            self._fixed_log_temperature = math.log(temperature)

    def forward(self, x: Tensor) -> Tensor:
        """Embeddings ``(N, D)`` of images ``x`` (N, C, H, W)."""
        return self.backbone(x)

    def logits(self, support_z: Tensor, support_y: Tensor, query_z: Tensor, n_way: int) -> Tensor:
        """Query logits from embeddings.

        Args:
            support_z: support embeddings ``(n_support, D)``.
            support_y: support labels ``(n_support,)`` in ``0..n_way-1``, each present.
            query_z: query embeddings ``(n_query_total, D)``.
            n_way: number of classes.

        Returns:
            ``(n_query_total, n_way)``: ``-‖q − c_k‖²`` (euclidean) or ``cos(q, c_k) / temperature`` (cosine).
            Each row is computed from its own query alone (no batch-size-dependent kernels).
        """
        onehot = F.one_hot(support_y, n_way).to(support_z.dtype)  # (n_support, n_way)
        prototypes = (onehot.t() @ support_z) / onehot.sum(0).unsqueeze(1)  # (n_way, D)
        if self.distance == "euclidean":
            return -(query_z.unsqueeze(1) - prototypes.unsqueeze(0)).pow(2).sum(-1)
        q, p = F.normalize(query_z, dim=-1), F.normalize(prototypes, dim=-1)
        if self.log_temperature is not None:
            scale: Tensor | float = torch.exp(-self.log_temperature)
        else:
            scale = math.exp(-self._fixed_log_temperature)
        return (q.unsqueeze(1) * p.unsqueeze(0)).sum(-1) * scale

    @property
    def temperature(self) -> float | None:
        """The cosine temperature (``None`` for the Euclidean distance)."""
        if self.distance == "euclidean":
            return None
        if self.log_temperature is not None:
            return math.exp(self.log_temperature.item())
        return math.exp(self._fixed_log_temperature)

    def _embed(self, episode: Episode, norm_policy: Policy) -> tuple[Tensor, Tensor, NormStats]:
        """Support and query embeddings ``((n_support, D), (n_query_total, D))`` under ``norm_policy``.

        The third value is the norm statistics of the batch-statistics forward (support+query, or the support
        alone under ``support``): what a ``meta_batch`` state update reads.
        """
        sx, qx = episode.support_x, episode.query_x
        if norm_policy is Policy.SUPPORT:
            with norms.collect(self) as support_stats:
                support_z = self.backbone(self.prepare(sx))
            with norms.using(self, support_stats):
                query_z = rowwise(self.backbone, self.prepare(qx))
            return support_z, query_z, support_stats
        if norm_policy is Policy.TRANSDUCTIVE or self.training:
            with norms.collect(self) as stats:
                z = self.backbone(self.prepare(torch.cat([sx, qx])))
            return z[: sx.shape[0]], z[sx.shape[0] :], stats
        return self.backbone(self.prepare(sx)), rowwise(self.backbone, self.prepare(qx)), {}

    def meta_loss(self, episodes: Sequence[Episode], *, policy: str = "running") -> tuple[Tensor, dict[str, Tensor]]:
        """Mean query cross-entropy over ``episodes`` in train mode, and ``{"loss", "acc"}``.

        Args:
            episodes: the meta-batch (one episode in the reference setting).
            policy: norm statistics policy: ``"running"`` (batch statistics, running state updated), ``"transductive"``
                or ``"support"`` (see the class docstring).

        Returns:
            ``(loss, metrics)``: the differentiable scalar loss, and ``{"loss", "acc"}``: its value and the query
            accuracy as detached 0-dim tensors (:func:`~fewshot.learners.base.accuracy`; nothing read on the host).
        """
        policy = check_train_policy(policy)
        episodes = self._episodes(episodes)
        for ep in episodes:
            check_episode(ep)
        losses, episode_stats, all_logits = [], [], []
        once = self.norm_state_update == "meta_batch"
        with self.mode(training=True, norm_policy=policy, frozen=once):
            for ep in episodes:
                support_z, query_z, stats = self._embed(ep, policy)
                episode_stats.append(stats)
                logits = self.logits(support_z, ep.support_y, query_z, ep.n_way)
                losses.append(F.cross_entropy(logits, ep.query_y))
                all_logits.append(logits.detach())
        if once:
            self._commit_norm_state(episode_stats)
        loss = torch.stack(losses).mean()
        return loss, {"loss": loss.detach(), "acc": accuracy(all_logits, [ep.query_y for ep in episodes])}

    def _commit_norm_state(self, episode_stats: list[NormStats]) -> None:
        """``meta_batch``: the meta-step's one state change, from every episode's statistics merged in order."""
        if not any(layer.track_running_stats for layer in norm_layers(self)):
            return
        merged = norms.merge(self, gather_episode_stats(episode_stats))
        norms.commit(self, norms.next_state(self, merged), merged)

    def predict(self, episode: Episode, *, policy: str = "running") -> Tensor:
        """Meta-test logits ``(n_way * n_query, n_way)`` for ``episode.query_x``; changes no model state.

        Args:
            episode: the task.
            policy: ``"transductive"`` (batch statistics of support+query), ``"support"`` (support statistics
                applied to the query) or ``"running"`` (eval-mode running statistics).
        """
        norm_policy = predict_norm_policy(policy)
        check_episode(episode)
        with torch.no_grad(), self.mode(training=False, norm_policy=norm_policy, frozen=True):
            support_z, query_z, _ = self._embed(episode, norm_policy)
            return self.logits(support_z, episode.support_y, query_z, episode.n_way)

    def extra_repr(self) -> str:
        parts = [f"distance={self.distance!r}"]
        if self.distance == "cosine":
            parts.append(f"temperature={self.temperature:.4g}, learn_temperature={self.log_temperature is not None}")
        parts.append(f"channels_last={self.channels_last}")
        if self.norm_state_update != "forward":
            parts.append(f"norm_state_update={self.norm_state_update!r}")
        return ", ".join(parts)
