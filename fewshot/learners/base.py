"""``Learner``: the base class of the few-shot learners, and the helpers they share.

A learner wraps a backbone and implements two calls (see docs/ARCHITECTURE.md and the engine contract):

* ``meta_loss(episodes, *, policy)``: the differentiable mean loss over a meta-batch of episodes, in train
  mode, with the normalization statistics policy ``policy`` used during meta-training (``"running"``,
  ``"transductive"`` or ``"support"``, :class:`fewshot.norms.Policy`), plus ``{"loss", "acc"}`` metrics
  (detached 0-dim tensors: nothing is read on the host);
* ``predict(episode, *, policy)``: meta-test logits for the query set, with the same policies; it changes no
  parameter, buffer or norm state, and restores train/eval modes and norm policies afterwards.

Nothing about an episode is kept on the learner between calls: support statistics are values passed from the
support forward to the query forward (``fewshot.norms.collect`` / ``using``). Shared here: policy parsing, the
mode contexts, the channels-last input conversion, episode checks and accuracy.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager, nullcontext
from contextvars import ContextVar
from typing import Protocol

import torch
from torch import Tensor, nn

import fewshot.norms as norms
from episodes.episode import Episode
from fewshot.host_reads import defers_host_reads
from fewshot.norms.flow import NormStats
from fewshot.norms.policy import Policy

__all__ = [
    "Learner",
    "accuracy",
    "check_episode",
    "predict_norm_policy",
    "check_train_policy",
    "rowwise",
    "MIN_QUERY_ROWS",
    "NormStatsSync",
    "gather_episode_stats",
    "joined_batch_stats",
    "syncing_norm_stats",
]


class NormStatsSync(Protocol):
    """How the norm statistics of a meta-step split across processes become those of the whole meta-batch.

    ``fewshot.training.meta_step_sync.NormStatsSync`` implements it for ``torch.distributed`` ranks; a learner
    calls it through :func:`gather_episode_stats` and :func:`joined_batch_stats` and never knows about ranks.
    """

    def gather(self, parts: list[NormStats]) -> list[NormStats]:
        """Every rank's per-episode statistics, in episode order, from this rank's ``parts``."""
        ...

    def joined(self, module: nn.Module) -> AbstractContextManager[None]:
        """A block in which every batch-statistics forward of ``module``'s norm layers uses the statistics of
        the rank-ordered concatenation of every rank's batch (each layer's merged across ranks before use)."""
        ...


#: The sync of the current meta-step (``None``: this process holds the whole meta-batch).
_norm_stats_sync: ContextVar[NormStatsSync | None] = ContextVar("fewshot_norm_stats_sync", default=None)


@contextmanager
def syncing_norm_stats(sync: NormStatsSync | None) -> Iterator[None]:
    """Inside the block, :func:`gather_episode_stats` and :func:`joined_batch_stats` go through ``sync``."""
    token = _norm_stats_sync.set(sync)
    try:
        yield
    finally:
        _norm_stats_sync.reset(token)


def gather_episode_stats(parts: list[NormStats]) -> list[NormStats]:
    """The norm statistics of every episode of the meta-step, in episode order, from this process's ``parts``.

    One process: ``parts`` itself. Several processes (a meta-batch split by episode index across ranks): every
    rank's parts, gathered, so each rank computes the same next norm state as one process would.
    """
    sync = _norm_stats_sync.get()
    return parts if sync is None else sync.gather(parts)


def joined_batch_stats(module: nn.Module) -> AbstractContextManager[None]:
    """A block whose batch-statistics forwards of ``module`` see every rank's batch (one process: no change).

    For a gradient-free state pass over a meta-batch's supports split across ranks: layer ``l``'s statistics
    depend on layer ``l-1``'s output normalized with the joined statistics, so the ranks merge each layer's
    statistics inside the pass, not after it.
    """
    sync = _norm_stats_sync.get()
    return nullcontext() if sync is None else sync.joined(module)


def check_train_policy(policy: object) -> Policy:
    """The meta-training norm policy ``policy`` names (a :class:`~fewshot.norms.policy.Policy` or its name)."""
    return Policy.parse(policy, where="meta-training norm policy (train.norm_policy)")


def predict_norm_policy(policy: object) -> Policy:
    """The meta-test norm policy ``policy`` names (a :class:`~fewshot.norms.policy.Policy` or its name)."""
    return Policy.parse(policy, where="meta-test norm policy (eval.norm_policy)")


def accuracy(logits: Tensor | Sequence[Tensor], labels: Tensor | Sequence[Tensor]) -> Tensor:
    """Fraction of rows of ``logits`` (M, n_way) whose argmax equals ``labels`` (M,), over one or several pairs.

    Returns a detached 0-dim float64 tensor on the logits' device: total correct / total rows, computed there (no
    host read; the division rounds as Python's ``correct / total`` does). ``float(...)`` reads it.

    Example:
        >>> accuracy(torch.tensor([[0.0, 1.0], [2.0, 1.0]]), torch.tensor([1, 1]))
        tensor(0.5000, dtype=torch.float64)
    """
    if isinstance(logits, Tensor):
        logits, labels = [logits], [labels]
    pairs = list(zip(logits, labels, strict=True))
    correct = torch.stack([(lg.detach().argmax(dim=-1) == y).sum() for lg, y in pairs]).sum()
    return correct.double() / sum(int(y.shape[0]) for _, y in pairs)


def check_episode(episode: Episode, n_way: int | None = None) -> None:
    """Raise ValueError/TypeError if ``episode``'s tensors are inconsistent (or its way differs from ``n_way``).

    Checks: 4-D images with equal (C, H, W) for support and query, 1-D int64 labels of matching length, support
    labels covering ``0..n_way-1``, query labels in range. On a GPU the label values are checked on the device
    (``torch._assert_async``: no wait for the host per step; a failure surfaces as a CUDA device-side assertion
    at the next synchronisation, naming the check); shapes and dtypes are checked at once everywhere.
    """
    if not isinstance(episode, Episode):
        raise TypeError(f"expected an episodes.episode.Episode, got {type(episode).__name__}")
    sx, sy, qx, qy = episode.support_x, episode.support_y, episode.query_x, episode.query_y
    way = episode.n_way
    if sx.dim() != 4 or qx.dim() != 4 or sx.shape[1:] != qx.shape[1:]:
        raise ValueError(
            f"episode {episode.index}: support_x and query_x must be (N, C, H, W) with equal (C, H, W), got "
            f"{tuple(sx.shape)} and {tuple(qx.shape)}"
        )
    for name, x, y in (("support", sx, sy), ("query", qx, qy)):
        if y.dim() != 1 or y.shape[0] != x.shape[0] or y.dtype != torch.int64:
            raise ValueError(
                f"episode {episode.index}: {name}_y must be int64 of shape ({x.shape[0]},), got {y.dtype} "
                f"{tuple(y.shape)}"
            )
    if n_way is not None and way != n_way:
        raise ValueError(
            f"episode {episode.index} has {way} classes but the learner was built for n_way={n_way}; build it "
            f"with n_way={way} or sample {n_way}-way episodes"
        )
    if defers_host_reads(sy):
        _assert_labels_on_device(sy, qy, way, episode.index)
        return
    if sy.numel() == 0 or int(sy.min()) < 0 or int(sy.max()) >= way:
        raise ValueError(
            f"episode {episode.index}: support_y must hold the labels 0..{way - 1}, got {sy.unique().tolist()}"
        )
    counts = torch.bincount(sy, minlength=way)
    if bool((counts == 0).any()):
        raise ValueError(
            f"episode {episode.index}: support_y must hold every label 0..{way - 1} at least once, got counts "
            f"{counts.tolist()}"
        )
    if qy.numel() and (int(qy.min()) < 0 or int(qy.max()) >= way):
        raise ValueError(f"episode {episode.index}: query_y must lie in 0..{way - 1}, got {qy.unique().tolist()}")


def _assert_labels_on_device(sy: Tensor, qy: Tensor, way: int, index: int) -> None:
    """The label checks of :func:`check_episode` as one asynchronous device-side assertion."""
    if sy.numel() == 0:
        raise ValueError(f"episode {index}: support_y must hold the labels 0..{way - 1}, got none")
    labels = torch.arange(way, device=sy.device)
    ok = ((sy >= 0) & (sy < way)).all() & (sy[:, None] == labels).any(0).all() & ((qy >= 0) & (qy < way)).all()
    torch._assert_async(
        ok, f"episode {index}: support_y must hold every label 0..{way - 1} and query_y lie in 0..{way - 1}"
    )


#: Smallest batch the non-transductive query path runs (see :func:`rowwise`).
MIN_QUERY_ROWS = 16


def rowwise(fn: Callable[[Tensor], Tensor], x: Tensor, model: nn.Module | None = None) -> Tensor:
    """``fn(x)`` for a row-independent ``fn``, computed so that each output row is bitwise batch-invariant.

    PyTorch picks kernels by batch size: a convolution gets oneDNN only when the batch has at least 16 images or
    other conditions hold (otherwise a 1×1 convolution on one thread, or a small single-image convolution, runs on
    the native kernel), and a one-row matrix product runs as a matrix-vector product. Different kernels change
    the last bits. From 16 rows up, each row's result depends on that row alone (checked for Conv-4, ResNet-12,
    grouped 1×1 whitening products and linear heads, on 1 and 2 threads, plain and channels-last). So a batch of
    fewer than ``MIN_QUERY_ROWS`` rows is padded by repeating its rows, and the extra outputs are dropped. A
    module whose forward mixes rows through batch statistics (:func:`fewshot.norms.batch_dependent`: TaskNorm
    outside ``using``, a layer under ``transductive``) is called on ``x`` as it is when ``x`` has 2 to 15 rows,
    since repeating some rows would change its statistics (copies of a single row do not: one row is padded); so
    is any ``fn`` when ``model`` (the module ``fn`` runs) is such a module.

    Args:
        fn: maps ``(M, ...)`` to ``(M, ...)``, row by row unless its module is batch-dependent (see above).
        x: input of shape ``(M, ...)``.
        model: the module whose normalization layers ``fn`` runs, when ``fn`` is not that module itself.

    Returns:
        ``fn(x)``, shape ``(M, ...)``.
    """
    n = x.shape[0]
    if n >= MIN_QUERY_ROWS or n == 0:
        return fn(x)
    owner = model if model is not None else fn
    if n > 1 and isinstance(owner, nn.Module) and norms.batch_dependent(owner):
        return fn(x)  # copies of one row have that row's statistics: a single row is still padded
    padded = torch.cat([x] * -(-MIN_QUERY_ROWS // n))[:MIN_QUERY_ROWS]
    return fn(padded)[:n]


class Learner(nn.Module):
    """Base class of the few-shot learners.

    Args:
        backbone: feature extractor mapping ``(N, C, H, W)`` to ``(N, D)``.
        channels_last: convert input images to the channels-last memory format (the trainer converts the model).

    Subclasses implement :meth:`meta_loss` and :meth:`predict`.
    """

    def __init__(self, backbone: nn.Module, *, channels_last: bool = False) -> None:
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"backbone must be an nn.Module, got {type(backbone).__name__}")
        self.backbone = backbone
        self.channels_last = bool(channels_last)

    # ----------------------------------------------------------------- the learner API
    def meta_loss(self, episodes: Sequence[Episode], *, policy: str = "running") -> tuple[Tensor, dict[str, Tensor]]:
        """Mean loss over the meta-batch ``episodes`` (differentiable) and ``{"loss", "acc"}`` metrics.

        The metrics are detached 0-dim tensors on the model's device (the loss's value and :func:`accuracy`), so
        the step reads nothing on the host; the trainer reads them when it logs.
        """
        raise NotImplementedError

    def predict(self, episode: Episode, *, policy: str = "running") -> Tensor:
        """Meta-test logits ``(n_way * n_query, n_way)`` for ``episode.query_x``."""
        raise NotImplementedError

    # ----------------------------------------------------------------- helpers for subclasses
    def prepare(self, x: Tensor) -> Tensor:
        """``x`` (N, C, H, W) in the learner's memory format (channels-last when ``channels_last`` is set)."""
        if self.channels_last:
            return x.contiguous(memory_format=torch.channels_last)
        return x

    @staticmethod
    def _episodes(episodes: Sequence[Episode]) -> list[Episode]:
        if isinstance(episodes, Episode):
            episodes = [episodes]
        episodes = list(episodes)
        if not episodes:
            raise ValueError("meta_loss needs at least one episode, got an empty meta-batch")
        return episodes

    @contextmanager
    def mode(self, *, training: bool, norm_policy: str, frozen: bool) -> Iterator[None]:
        """Run the block in train or eval mode with norm ``norm_policy`` (optionally with frozen norm state).

        Every module's ``training`` flag and every norm layer's policy are restored on exit, also on error.
        """
        saved_modes = [(m, m.training) for m in self.modules()]
        with ExitStack() as stack:
            try:
                self.train(training)
                stack.enter_context(norms.set_policy(self, norm_policy))
                if frozen:
                    stack.enter_context(norms.frozen_stats(self))
                yield
            finally:
                for m, flag in saved_modes:
                    m.training = flag
