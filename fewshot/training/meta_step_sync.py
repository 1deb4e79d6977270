"""A meta-step split across ranks that leaves every rank with the single-process result.

Three things make ``W`` ranks equal to one process (docs/distributed.md):

* **Episodes.** Meta-step ``b`` of a single process trains on episodes ``b·B .. b·B + B − 1`` (``B =
  train.meta_batch``). Rank ``r`` of ``W`` takes the contiguous block ``b·B + r·B/W .. b·B + (r+1)·B/W − 1``
  (:func:`local_episodes`): together the ranks see exactly those episodes, rank order = episode order. ``B`` must
  be a multiple of ``W`` (:func:`check_meta_batch`; an uneven split is refused, not weighted).
* **Gradients.** Each rank's loss is the mean over its ``B/W`` episodes, so the mean of the ranks' gradients is
  the gradient of the mean over all ``B`` episodes: one flat all-reduce (sum, then ÷ ``W``) per step
  (:func:`average_gradients`), after which every rank's Adam takes the same step from the same state.
* **Normalization state.** A learner's meta-batch state update reads the per-episode norm statistics (counts,
  means, (co)variances: sufficient statistics); :func:`episode_stats_gatherer` all-gathers them so every rank
  merges all ``B`` episodes' statistics in episode order (Chan's rule, ``fewshot.norms.merge``) and applies the
  same update: the state after the step is the single-process state. Nothing is broadcast from rank 0.

Equality with one process is to float tolerance: the gradient all-reduce sums in another order than one
process's backward over the stacked losses.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_flatten, tree_unflatten

from fewshot.errors import ConfigError
from fewshot.norms.flow import NormStats
from fewshot.training.distributed import Distributed

__all__ = [
    "average_gradients",
    "check_learner",
    "check_meta_batch",
    "episode_stats_gatherer",
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
    state episode ``i`` left: a chain no split across ranks reproduces.

    Raises:
        ConfigError: ``learner.kwargs.norm_state_update`` is ``forward`` on more than one rank.
    """
    if world_size > 1 and getattr(learner, "norm_state_update", None) == "forward":
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


def mean_over_ranks(values: dict[str, float], ctx: Distributed) -> dict[str, float]:
    """``{key: mean of the ranks' values}`` (equal shares per rank make it the mean over all episodes)."""
    if not ctx.active:
        return dict(values)
    keys = sorted(values)
    flat = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64, device=ctx.device)
    ctx.all_reduce_sum_(flat, "all-reduce of the step's metrics")
    return {k: float(v) / ctx.world_size for k, v in zip(keys, flat.tolist(), strict=True)}


def episode_stats_gatherer(ctx: Distributed) -> Callable[[list[NormStats]], list[NormStats]]:
    """``parts`` (this rank's episodes' norm statistics) → every rank's, in rank order = episode order.

    Each rank's parts are flattened (a pytree of NamedTuples of tensors) into one float64 vector, gathered with
    one ``all_gather`` and rebuilt with this rank's structure and dtypes (float32 → float64 → float32 is exact).
    Every rank holds the same number of episodes (:func:`check_meta_batch`) with the same layers, so the vectors
    have equal lengths. For :func:`fewshot.learners.base.gathering_episode_stats`.
    """

    def gather(parts: list[NormStats]) -> list[NormStats]:
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
        sizes = ctx.all_gather(size, "all-gather of the norm statistics' sizes")
        if any(int(s.item()) != flat.numel() for s in sizes):
            raise ConfigError(
                f"the ranks' norm statistics differ in size ({[int(s.item()) for s in sizes]} values): every rank "
                "must run the same model on the same number of episodes with the same shapes"
            )
        out: list[NormStats] = []
        for flat_r in ctx.all_gather(flat, "all-gather of the norm statistics"):
            rebuilt, offset = list(leaves), 0
            for i, t in zip(where, tensors, strict=True):
                rebuilt[i] = flat_r[offset : offset + t.numel()].view(t.shape).to(dtype=t.dtype, device=t.device)
                offset += t.numel()
            out.extend(tree_unflatten(rebuilt, spec))
        return out

    return gather
