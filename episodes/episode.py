"""`Episode`: one N-way K-shot task as tensors, and `collate_episodes` to stack a meta-batch of them.

An episode is what a learner consumes: a labelled support set and a query set drawn from the same ``n_way``
classes. Labels are ``0..n_way-1`` in **sorted class-name order** (label ``j`` is ``class_ids[j]``), and the
rows are class-major: all support images of label 0, then all of label 1, and so on; the query set likewise.
Episodes are built by :class:`episodes.sampler.EpisodeSampler` (or bound from a fixed-episode file by
:mod:`episodes.fixed`); nothing here draws random numbers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

__all__ = ["Episode", "EpisodeBatch", "collate_episodes"]


@dataclass(frozen=True, eq=False)
class Episode:
    """One N-way K-shot episode (task), class-major, labels in sorted class-name order.

    Attributes:
        support_x: float32 images in [0, 1], shape ``(n_way * n_shot, C, H, W)``.
        support_y: int64 labels, shape ``(n_way * n_shot,)``: ``[0]*n_shot + [1]*n_shot + ...``.
        query_x: float32 images in [0, 1], shape ``(n_way * n_query, C, H, W)``.
        query_y: int64 labels, shape ``(n_way * n_query,)``, class-major like ``support_y``.
        class_ids: dataset-level class names, sorted; label ``j`` is ``class_ids[j]``.
        support_ids: dataset-level image ids of the support rows, in row order.
        query_ids: dataset-level image ids of the query rows, in row order.
        index: the episode's index in its sampler (or fixed-episode file).

    Equality is identity (``eq=False``): compare tensors with ``torch.equal``.

    Example:
        >>> ep = sampler[0]  # doctest: +SKIP
        >>> ep.support_x.shape, ep.n_way, ep.n_shot, ep.n_query  # doctest: +SKIP
        (torch.Size([5, 1, 28, 28]), 5, 1, 15)
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    class_ids: tuple[str, ...]
    support_ids: tuple[str, ...]
    query_ids: tuple[str, ...]
    index: int

    @property
    def n_way(self) -> int:
        """Number of classes in the episode."""
        return len(self.class_ids)

    @property
    def n_shot(self) -> int:
        """Support images per class."""
        return self.support_y.shape[0] // len(self.class_ids)

    @property
    def n_query(self) -> int:
        """Query images per class."""
        return self.query_y.shape[0] // len(self.class_ids)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> Episode:
        """The same episode with its tensors on ``device`` and its images in ``dtype`` (labels stay int64).

        Returns ``self`` when nothing changes. The copy is non-blocking where the source is pinned memory.
        """
        sx, qx, sy, qy = self.support_x, self.query_x, self.support_y, self.query_y
        new = (
            sx.to(device=device, dtype=dtype, non_blocking=True),
            sy.to(device=device, non_blocking=True),
            qx.to(device=device, dtype=dtype, non_blocking=True),
            qy.to(device=device, non_blocking=True),
        )
        if all(a is b for a, b in zip(new, (sx, sy, qx, qy), strict=True)):
            return self
        return Episode(*new, self.class_ids, self.support_ids, self.query_ids, self.index)

    def __repr__(self) -> str:
        c, h, w = self.support_x.shape[1:]
        return (
            f"Episode(index={self.index}, n_way={self.n_way}, n_shot={self.n_shot}, n_query={self.n_query}, "
            f"image=({c}, {h}, {w}), classes={list(self.class_ids)})"
        )


@dataclass(frozen=True, eq=False)
class EpisodeBatch:
    """A meta-batch of ``B`` episodes of identical sizes, stacked along a new leading dimension.

    Attributes:
        support_x: ``(B, n_way * n_shot, C, H, W)`` float32.
        support_y: ``(B, n_way * n_shot)`` int64.
        query_x: ``(B, n_way * n_query, C, H, W)`` float32.
        query_y: ``(B, n_way * n_query)`` int64.
        class_ids: per episode, its sorted class names.
        support_ids: per episode, its support image ids.
        query_ids: per episode, its query image ids.
        index: per episode, its index.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    class_ids: tuple[tuple[str, ...], ...]
    support_ids: tuple[tuple[str, ...], ...]
    query_ids: tuple[tuple[str, ...], ...]
    index: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, b: int) -> Episode:
        """The ``b``-th episode of the batch (tensors are views into the batch)."""
        return Episode(
            self.support_x[b], self.support_y[b], self.query_x[b], self.query_y[b],
            self.class_ids[b], self.support_ids[b], self.query_ids[b], self.index[b],
        )  # fmt: skip


def collate_episodes(episodes: Sequence[Episode]) -> EpisodeBatch:
    """Stack episodes of identical sizes into an :class:`EpisodeBatch` (usable as a DataLoader ``collate_fn``).

    Args:
        episodes: a non-empty list of episodes with equal ``n_way``, ``n_shot``, ``n_query`` and image shape.

    Returns:
        The batch; tensors gain a leading dimension ``B = len(episodes)``.

    Raises:
        ValueError: if the list is empty or the episodes' shapes differ (the message names the first mismatch).
    """
    episodes = list(episodes)
    if not episodes:
        raise ValueError("collate_episodes needs at least one episode, got an empty list")
    for ep in episodes:
        if not isinstance(ep, Episode):
            raise TypeError(f"collate_episodes expects Episode objects, got {type(ep).__name__}")
    first = episodes[0]
    for ep in episodes[1:]:
        if ep.support_x.shape != first.support_x.shape or ep.query_x.shape != first.query_x.shape:
            raise ValueError(
                "collate_episodes needs episodes of identical sizes; episode "
                f"{first.index} has support {tuple(first.support_x.shape)} / query {tuple(first.query_x.shape)} "
                f"but episode {ep.index} has support {tuple(ep.support_x.shape)} / query "
                f"{tuple(ep.query_x.shape)}; sample the meta-batch from one sampler"
            )
    return EpisodeBatch(
        support_x=torch.stack([ep.support_x for ep in episodes]),
        support_y=torch.stack([ep.support_y for ep in episodes]),
        query_x=torch.stack([ep.query_x for ep in episodes]),
        query_y=torch.stack([ep.query_y for ep in episodes]),
        class_ids=tuple(ep.class_ids for ep in episodes),
        support_ids=tuple(ep.support_ids for ep in episodes),
        query_ids=tuple(ep.query_ids for ep in episodes),
        index=tuple(ep.index for ep in episodes),
    )
