"""A meta-step split across ranks that leaves every rank with the single-process result.

Three things make ``W`` ranks equal to one process (docs/distributed.md):

* **Episodes.** Meta-step ``b`` of a single process trains on episodes ``b·B .. b·B + B − 1`` (``B =
  train.meta_batch``). Rank ``r`` of ``W`` takes the contiguous block ``b·B + r·B/W .. b·B + (r+1)·B/W − 1``
  (:func:`local_episodes`): together the ranks see exactly those episodes, rank order = episode order. ``B`` must
  be a multiple of ``W`` (:func:`check_meta_batch`; an uneven split is refused, not weighted).
* **Gradients.** Each rank's loss is the mean over its ``B/W`` episodes, so the mean of the ranks' gradients is
  the gradient of the mean over all ``B`` episodes: one flat all-reduce (sum, then ÷ ``W``) per step
  (:func:`average_gradients`), after which every rank's Adam takes the same step from the same state.
* **Normalization state.** State updates read sufficient statistics (counts, means, (co)variances), which
  merge exactly (Chan's rule, ``fewshot.norms.merge``); :class:`NormStatsSync` all-gathers them. ProtoNet's
  ``meta_batch`` update merges the per-episode statistics of all ``B`` episodes in episode order. MAML's update
  is a gradient-free pass over the joined supports: there each norm layer merges its statistics across the
  ranks *inside* the pass before normalizing, since layer ``l``'s statistics depend on layer ``l-1`` normalized
  with the joined statistics. Every rank applies the same update: the state after the step is the
  single-process state. Nothing is broadcast from rank 0.

Equality with one process is to float tolerance: the gradient all-reduce sums in another order than one
process's backward over the stacked losses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from fewshot.errors import ConfigError
from fewshot.norms.flow import NormStats
from fewshot.training.distributed import Distributed

__all__ = [
    "NormStatsSync",
    "average_gradients",
    "check_learner",
    "check_meta_batch",
    "local_episodes",
    "mean_over_ranks",
    "split_evenly",
]


def check_meta_batch(meta_batch: int, world_size: int) -> None:
    """Refuse a meta-batch the world size does not divide (every rank must hold the same number of episodes).

    Raises:
        ConfigError: naming both numbers and the nearest meta-batches that work.
    """
    if meta_batch % world_size:
        lower = meta_batch // world_size * world_size
        upper = lower + world_size
        raise ConfigError(
            f"train.meta_batch = {meta_batch} is not a multiple of the world size {world_size} (ranks): each rank "
            f"must train on the same number of episodes of a meta-step; set train.meta_batch to "
            f"{f'{lower} or ' if lower else ''}{upper} (and train.episodes to a multiple of it), or start "
            f"{'a divisor of ' + str(meta_batch) if meta_batch > 1 else '1'} rank(s)"
        )


def check_learner(learner: nn.Module, world_size: int) -> None:
    """Refuse a learner whose norm state cannot be kept as single-process state on ``world_size`` ranks.

    ProtoNet's ``norm_state_update="forward"`` updates the state in every forward, so episode ``i+1`` reads the
    state episode ``i`` left; MAML's ``"task"`` makes one update per task in task order: chains no split across
    ranks reproduces.

    Raises:
        ConfigError: ``learner.kwargs.norm_state_update`` is ``forward`` or ``task`` on more than one rank.
    """
    mode = getattr(learner, "norm_state_update", None)
    if world_size > 1 and mode == "task":
        raise ConfigError(
            f"learner {type(learner).__name__} has norm_state_update='task' (one norm state update per task, each "
            f"from the state the previous task left), which {world_size} ranks cannot reproduce; set "
            "learner.kwargs.norm_state_update=meta_batch (the default: one update per meta-step from the joined "
            "supports), or train on one process"
        )
    if world_size > 1 and mode == "forward":
        raise ConfigError(
            f"learner {type(learner).__name__} has norm_state_update='forward' (norm state updated in every "
            f"training forward, each episode reading the state the previous one left), which {world_size} ranks "
            "cannot reproduce; set learner.kwargs.norm_state_update=meta_batch (one update per meta-step from "
            'the merged statistics of its episodes), e.g. --set "learner.kwargs={norm_state_update: meta_batch}", '
            "or train on one process"
        )


def split_evenly(n: int, ctx: Distributed) -> range:
    """Indices ``0..n-1`` of this rank's contiguous share: rank ``r`` gets ``r·⌈n/W⌉ ..`` (the last may be short)."""
    per = -(-n // ctx.world_size)
    return range(min(n, ctx.rank * per), min(n, (ctx.rank + 1) * per))


def local_episodes(start: int, meta_batch: int, ctx: Distributed) -> range:
    """Episode indices of this rank's share of the meta-step whose first episode is ``start`` (module docstring)."""
    check_meta_batch(meta_batch, ctx.world_size)
    per = meta_batch // ctx.world_size
    first = start + ctx.rank * per
    return range(first, first + per)


def average_gradients(parameters: Iterable[nn.Parameter], ctx: Distributed) -> None:
    """Replace every gradient by its mean over the ranks (one flat all-reduce; ``None`` gradients count as zero).

    Every rank must pass the same parameters in the same order (the same model). A parameter without gradient
    on every rank stays without one, as on one process.
    """
    if not ctx.active:
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    dtype = grads[0].dtype  # reduced in the gradients' own dtype: 4 bytes per float32 parameter on the wire
    flags = torch.tensor([p.grad is not None for p in params], dtype=dtype, device=grads[0].device)
    flat = torch.cat([flags, *(g.reshape(-1).to(dtype) for g in grads)])
    ctx.all_reduce_sum_(flat, "all-reduce of the gradients")
    flat /= ctx.world_size
    offset = len(params)
    for p, present, g in zip(params, flat[: len(params)], grads, strict=True):
        values = flat[offset : offset + g.numel()].view_as(g).to(g.dtype)
        offset += g.numel()
        if present > 0:
            p.grad = values.clone()


def mean_over_ranks(values: dict[str, Tensor | float], ctx: Distributed) -> dict[str, Tensor | float]:
    """``{key: mean of the ranks' values}`` (equal shares per rank make it the mean over all episodes).

    Values are 0-dim tensors (a learner's metrics) or floats; several ranks give float64 0-dim tensors on the
    rank's device, summed in float64 and divided by the world size there, without a host read (the trainer
    reads them when it logs; the same float64 sum and division as Python's on the read values).
    """
    if not ctx.active:
        return dict(values)
    keys = sorted(values)
    flat = torch.stack([torch.as_tensor(values[k], dtype=torch.float64).to(ctx.device) for k in keys])
    ctx.all_reduce_sum_(flat, "all-reduce of the step's metrics")
    return dict(zip(keys, (flat / ctx.world_size).unbind(), strict=True))


def _gather_parts(parts: list, ctx: Distributed, what: str) -> list:
    """``parts`` (a list of pytrees of tensors, equal structure on every rank) of every rank, in rank order.

    Flattened into one float64 vector, gathered with one ``all_gather`` and rebuilt with this rank's structure
    and dtypes (float32 → float64 → float32 is exact). Every rank must pass the same number of parts with the
    same shapes (:func:`check_meta_batch`), else a ConfigError.
    """
    if not ctx.active:
        return parts
    leaves, spec = tree_flatten(parts)
    where = [i for i, leaf in enumerate(leaves) if isinstance(leaf, Tensor)]
    tensors = [leaves[i].detach() for i in where]
    flat = (
        torch.cat([t.reshape(-1).to(torch.float64) for t in tensors])
        if tensors
        else torch.zeros(0, dtype=torch.float64, device=ctx.device)
    ).to(ctx.device)
    size = torch.tensor([flat.numel()], dtype=torch.float64, device=ctx.device)
    sizes = ctx.all_gather(size, f"all-gather of the {what}' sizes")
    if any(int(s.item()) != flat.numel() for s in sizes):
        raise ConfigError(
            f"the ranks' {what} differ in size ({[int(s.item()) for s in sizes]} values): every rank must run the "
            "same model on the same number of episodes with the same shapes"
        )
    out: list = []
    for flat_r in ctx.all_gather(flat, f"all-gather of the {what}"):
        rebuilt, offset = list(leaves), 0
        for i, t in zip(where, tensors, strict=True):
            rebuilt[i] = flat_r[offset : offset + t.numel()].view(t.shape).to(dtype=t.dtype, device=t.device)
            offset += t.numel()
        out.extend(tree_unflatten(rebuilt, spec))
    return out


class NormStatsSync:
    """The norm statistics of a meta-step split across ``ctx``'s ranks, made those of the whole meta-batch.

    * :meth:`gather`: every rank's per-episode statistics in episode order (rank order is episode order,
      :func:`local_episodes`); the learner merges them (ProtoNet ``norm_state_update="meta_batch"``).
    * :meth:`joined`: inside the block, every batch-statistics forward of a norm layer computes its batch's
      statistics, all-gathers them and uses the merge (Chan's rule, rank order) to update the state and to
      normalize: the statistics of the rank-ordered concatenation of the ranks' batches. For MAML's gradient-free
      state pass over the joined supports: layer ``l``'s input is then, row for row, what one process computes on
      the joined supports, so each layer's merged statistics are the joined ones (to rounding).

    For :func:`fewshot.learners.base.syncing_norm_stats`.
    """

    def __init__(self, ctx: Distributed) -> None:
        self.ctx = ctx

    def gather(self, parts: list[NormStats]) -> list[NormStats]:
        return _gather_parts(parts, self.ctx, "norm statistics")

    @contextmanager
    def joined(self, module: nn.Module) -> Iterator[None]:
        from fewshot.norms.base import NormLayer

        if not self.ctx.active:
            yield
            return
        layers = [m for m in module.modules() if isinstance(m, NormLayer) and not m.per_sample]
        for layer in layers:
            layer._batch_forward = self._joined_forward(layer)  # instance attribute: shadows the class method
        try:
            yield
        finally:
            for layer in layers:
                del layer._batch_forward

    def _joined_forward(self, layer: Any) -> Callable[[Tensor, Any], Tensor]:
        """``layer``'s ``_batch_forward`` (the base class's steps) with the statistics of every rank's batch."""

        def forward(x: Tensor, flow: Any) -> Tensor:
            stats = layer.merge_stats(_gather_parts([layer.stats(x)], self.ctx, "layer statistics"))
            layer._observe(stats, flow)  # records it, and updates the state (the pass runs with updates on)
            return layer.apply(x, stats)

        return forward
