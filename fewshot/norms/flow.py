"""Normalization statistics and state as values that flow through a model's forwards.

* ``with collect(model) as stats:`` — every batch-statistics forward of a norm layer inside the block records its
  statistics ``S`` in ``stats`` (``{layer path: S}``, the last forward of each layer wins). Under the ``support``
  policy this block marks the support forward.
* ``with using(model, stats):`` — layers with the ``support`` policy apply ``stats[path]`` instead of computing
  their own (the query forward of a task).
* ``next_state(model, stats, buffers)`` — ``{buffer name: next value}`` for every layer with state in ``stats``,
  from ``buffers`` (the dictionary given to ``torch.func.functional_call``; default the module's own), pure.
* ``commit(model, state, stats)`` — write a next state into the module's buffers (each layer's guarded ``commit``).
* ``merge(model, parts)`` — the statistics of several batches (e.g. a meta-batch's support sets, or the
  processes of a distributed step) as one: exact for the layers' inputs as given.
* ``advance(module, x, buffers)`` — the next state after one gradient-free train-mode forward of ``x``,
  computed on copies of ``buffers``: every layer updates from the statistics of its own input, which the
  layers before it produced with their updated state (what a plain training forward does). MAML's
  once-per-meta-step update on the meta-batch's joined supports uses it (docs/norm-state.md).

Nothing is stored on the modules: the flow of the innermost ``collect``/``using`` block lives in a context
variable, so the same model can run under ``vmap``, ``grad`` and ``functional_call`` (the statistics come back
as outputs of the transformed function). See docs/norm-state.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call

if TYPE_CHECKING:
    from fewshot.norms.base import NormLayer

__all__ = ["advance", "collect", "commit", "current_flow", "merge", "next_state", "using"]

NormStats = dict[str, Any]


class _Flow:
    """The statistics a block of forwards records (``collect``) or applies (``using``)."""

    def __init__(self, paths: dict[NormLayer, str], record: NormStats | None, given: Mapping[str, Any] | None):
        self._paths = paths
        self._record = record
        self._given = given

    @property
    def collects(self) -> bool:
        return self._record is not None

    def gives(self, layer: NormLayer) -> bool:
        if self._given is None:
            return False
        if self._paths.get(layer) not in self._given:
            raise RuntimeError(
                f"{type(layer).__name__} at {self._paths.get(layer, '<not in the model>')!r} has policy='support' but "
                f"the statistics given to `using` hold none for it (they hold {sorted(self._given)}); collect them "
                "with `fewshot.norms.collect(model)` on the same model"
            )
        return True

    def given(self, layer: NormLayer) -> Any:
        return self._given[self._paths[layer]]  # type: ignore[index]

    def record(self, layer: NormLayer, stats: Any) -> None:
        path = self._paths.get(layer)
        if path is not None:
            self._record[path] = stats  # type: ignore[index]


_current: ContextVar[_Flow | None] = ContextVar("fewshot_norm_flow", default=None)


def current_flow() -> _Flow | None:
    """The flow of the innermost ``collect``/``using`` block, or ``None`` (layers call it in ``forward``)."""
    return _current.get()


def _paths(model: nn.Module) -> dict[NormLayer, str]:
    from fewshot.norms.base import NormLayer

    return {m: path for path, m in model.named_modules() if isinstance(m, NormLayer)}


@contextmanager
def _entered(flow: _Flow) -> Iterator[None]:
    token = _current.set(flow)
    try:
        yield
    finally:
        _current.reset(token)


@contextmanager
def collect(model: nn.Module) -> Iterator[NormStats]:
    """Record the batch statistics of every norm layer of ``model`` in the forwards inside the block.

    Yields:
        ``{layer path: S}``, filled as the forwards run (the last forward of each layer wins).

    Example:
        >>> import torch
        >>> from fewshot.norms import create
        >>> model = torch.nn.Sequential(create("batchnorm", 4, policy="support"))
        >>> with collect(model) as stats:
        ...     _ = model(torch.randn(5, 4))
        >>> sorted(stats), int(stats["0"].count)
        (['0'], 5)
        >>> with using(model, stats):
        ...     model(torch.randn(1, 4)).shape  # one query, normalized with the support statistics
        torch.Size([1, 4])
    """
    record: NormStats = {}
    with _entered(_Flow(_paths(model), record, None)):
        yield record


@contextmanager
def using(model: nn.Module, stats: Mapping[str, Any]) -> Iterator[None]:
    """Inside the block, layers of ``model`` with the ``support`` policy apply ``stats[path]`` (see ``collect``)."""
    with _entered(_Flow(_paths(model), None, stats)):
        yield


def merge(model: nn.Module, parts: list[Mapping[str, Any]]) -> NormStats:
    """``{path: S}`` of several disjoint batches (e.g. the support sets of a meta-batch) merged per layer."""
    layers = {path: m for m, path in _paths(model).items()}
    return {path: layers[path].merge_stats([p[path] for p in parts]) for path in parts[0]} if parts else {}


def next_state(
    model: nn.Module, stats: Mapping[str, Any], buffers: Mapping[str, Tensor] | None = None
) -> dict[str, Tensor]:
    """``{buffer name: next value}``: each stateful layer's ``update`` from ``buffers`` and its statistics.

    Args:
        model: the model whose layers recorded ``stats``.
        stats: ``{layer path: S}`` (from ``collect`` or ``merge``).
        buffers: ``{buffer name: tensor}`` as given to ``functional_call`` (default: the model's own buffers).

    Returns:
        The next values of the buffers of the layers in ``stats`` that keep state; nothing is written.
    """
    buffers = dict(model.named_buffers()) if buffers is None else buffers
    out: dict[str, Tensor] = {}
    for layer, path in _paths(model).items():
        if path not in stats or not layer.track_running_stats:
            continue
        prefix = f"{path}." if path else ""
        state = {k: buffers[prefix + k] for k in layer.state()}
        out.update({prefix + k: v for k, v in layer.update(state, stats[path]).items()})
    return out


def commit(model: nn.Module, state: Mapping[str, Tensor], stats: Mapping[str, Any] | None = None) -> None:
    """Write ``state`` (from ``next_state``) into ``model``'s buffers through each layer's guarded ``commit``."""
    for layer, path in _paths(model).items():
        prefix = f"{path}." if path else ""
        mine = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix) and "." not in k[len(prefix) :]}
        if mine:
            layer.commit(mine, None if stats is None else stats.get(path))


def advance(module: nn.Module, x: Tensor, buffers: Mapping[str, Tensor] | None = None) -> dict[str, Tensor]:
    """``{buffer name: next value}`` after one gradient-free forward of ``x`` that updates the norm state.

    The forward runs through ``torch.func.functional_call`` on copies of ``buffers`` (default: the module's
    own), inside :func:`collect` (so ``support``-policy layers take the batch's statistics) and with state
    updates on for its duration; each layer's guarded ``commit`` writes into the copies, never into the module.
    Run it with the module in train mode (``running``-policy layers read their state in eval mode).

    Args:
        module: the model (e.g. a learner's backbone).
        x: the batch ``(N, C, H, W)``.
        buffers: the state to start from, ``{name: tensor}`` as ``module.named_buffers()`` names them.

    Returns:
        The next value of every buffer of ``module`` (unchanged ones included); write it with :func:`commit`.

    Example:
        >>> from fewshot.norms import create
        >>> layer = create("batchnorm", 3).train()
        >>> state = advance(layer, torch.ones(4, 3))
        >>> int(state["num_batches_tracked"]), int(layer.num_batches_tracked)  # the module is unchanged
        (1, 0)
        >>> commit(layer, state)
        >>> int(layer.num_batches_tracked)
        1
    """
    from fewshot.norms.base import NormLayer

    source = dict(module.named_buffers()) if buffers is None else buffers
    state = {k: v.detach().clone() for k, v in source.items()}
    layers = [m for m in module.modules() if isinstance(m, NormLayer)]
    saved = [(m, m.update_stats) for m in layers]
    try:
        for m in layers:
            m.update_stats = True
        with torch.no_grad(), collect(module):
            functional_call(module, state, (x,), strict=False)
    finally:
        for m, value in saved:
            m.update_stats = value
    return state
