"""Model-wide switches for normalization state: ``frozen_stats``, ``task_phase`` and ``set_policy``.

* ``frozen_stats(model)``: no layer changes any buffer or state inside the block.
* ``task_phase(model, "support" | "query")``: marks support and query forwards for layers with
  ``policy="support"`` (support statistics are cached in the support phase and applied to the query).
* ``set_policy(model, policy)``: sets the statistics policy of every layer; usable as a plain call or as a
  context manager that restores the previous policies.

All three act on every :class:`~fewshot.norms.base.NormLayer` in ``model.modules()`` (the model itself
included) and restore what they changed even when the block raises; they nest.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from fewshot.norms.base import PHASES, POLICIES, NormLayer

__all__ = ["PolicyChange", "frozen_stats", "norm_layers", "set_policy", "task_phase"]


def norm_layers(module: nn.Module) -> list[NormLayer]:
    """Every NormLayer in ``module.modules()`` (``module`` itself included), in registration order."""
    return [m for m in module.modules() if isinstance(m, NormLayer)]


def _torch_norms_with_state(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [
        (path or "<root>", m)
        for path, m in module.named_modules()
        if isinstance(m, (_BatchNorm, _InstanceNorm)) and m.track_running_stats
    ]


@contextmanager
def frozen_stats(module: nn.Module) -> Iterator[nn.Module]:
    """Inside the block no normalization layer of ``module`` changes any buffer or state.

    Every NormLayer gets ``update_stats = False`` (forwards compute the same outputs, but running state, SWBN's
    whitening matrix, Kalman state and ``num_batches_tracked`` are not written). Native torch BatchNorm layers
    (``nn.BatchNorm1d/2d/3d``, ``nn.SyncBatchNorm``) are frozen too: their ``track_running_stats`` is set to
    False for the duration, which in PyTorch means train-mode forwards use batch statistics and write nothing,
    and eval-mode forwards still read the running buffers, so outputs are unchanged and buffers stay bitwise
    equal. ``nn.InstanceNorm*`` with ``track_running_stats=True`` cannot be frozen this way and raises a
    TypeError (convert the model, or build it with ``track_running_stats=False``). Previous values are
    restored on exit, also when the block raises; nested blocks restore their own entry values.

    Args:
        module: any ``nn.Module``.

    Yields:
        ``module``.

    Example:
        >>> import torch
        >>> from fewshot.norms import create
        >>> layer = create("batchnorm", 4)
        >>> with frozen_stats(layer):
        ...     _ = layer(torch.randn(3, 4))
        >>> int(layer.num_batches_tracked)
        0
    """
    torch_norms = _torch_norms_with_state(module)
    for path, m in torch_norms:
        if isinstance(m, _InstanceNorm):
            raise TypeError(
                f"frozen_stats cannot freeze {type(m).__name__} at {path!r} (track_running_stats=True); build it "
                "with track_running_stats=False or replace it with fewshot.norms.convert/create('instancenorm')"
            )
    layers = norm_layers(module)
    saved_layers = [(m, m.update_stats) for m in layers]
    saved_torch = [(m, m.track_running_stats) for _, m in torch_norms]
    try:
        for m in layers:
            m.update_stats = False
        for _, m in torch_norms:
            m.track_running_stats = False
        yield module
    finally:
        for m, value in saved_layers:
            m.update_stats = value
        for m, value in saved_torch:
            m.track_running_stats = value


@contextmanager
def task_phase(module: nn.Module, phase: str) -> Iterator[nn.Module]:
    """Mark the forwards inside the block as the support or the query pass of one task.

    Only layers with ``policy="support"`` use the phase: in the support phase they compute batch statistics
    and cache them; in the query phase they apply the cached support statistics. Entering a support phase
    clears every layer's cache; leaving a query phase clears it too, so nothing leaks into the next task.
    The previous phase is restored on exit.

    Args:
        module: any ``nn.Module``.
        phase: ``"support"`` or ``"query"``.

    Yields:
        ``module``.

    Example:
        >>> import torch
        >>> from fewshot.norms import create
        >>> layer = create("batchnorm", 4, policy="support")
        >>> with task_phase(layer, "support"):
        ...     _ = layer(torch.randn(5, 4))
        >>> with task_phase(layer, "query"):
        ...     y = layer(torch.randn(1, 4))  # one query at a time, with the support's statistics
    """
    if phase not in PHASES:
        raise ValueError(f"task_phase expects phase 'support' or 'query', got {phase!r}")
    layers = norm_layers(module)
    saved = [(m, m.phase) for m in layers]
    try:
        for m in layers:
            if phase == "support":
                m.clear_support_stats()
            m.set_phase(phase)
        yield module
    finally:
        for m, value in saved:
            if phase == "query":
                m.clear_support_stats()
            m.set_phase(value)


class PolicyChange:
    """The result of :func:`set_policy`: the change is already applied; ``with``/``restore()`` undoes it."""

    def __init__(self, saved: list[tuple[NormLayer, str]]) -> None:
        self._saved = saved

    def restore(self) -> None:
        """Put back the policies the layers had before ``set_policy``."""
        for m, value in reversed(self._saved):
            m.policy = value
        self._saved = []

    def __enter__(self) -> PolicyChange:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()


def set_policy(module: nn.Module, policy: str) -> PolicyChange:
    """Set the statistics policy of every NormLayer in ``module``.

    Layers whose policy is part of their definition (``fixed_policy``, e.g. ``batchnorm_transductive``) keep
    it; per-sample layers accept any policy and ignore it. Native torch BatchNorm layers (and InstanceNorm with
    running statistics) cannot follow a policy, so a module containing one raises a TypeError (convert first).

    Args:
        module: any ``nn.Module``.
        policy: ``"running"``, ``"batch"`` or ``"support"``.

    Returns:
        A :class:`PolicyChange`: ignore it for a permanent change, or use ``with set_policy(model, p):`` (or
        call ``.restore()``) to put the previous policies back.

    Example:
        >>> from fewshot.norms import create
        >>> layer = create("batchnorm", 4)
        >>> with set_policy(layer, "batch"):
        ...     layer.policy
        'batch'
        >>> layer.policy
        'running'
    """
    if policy not in POLICIES:
        raise ValueError(f"set_policy expects one of {', '.join(map(repr, POLICIES))}, got {policy!r}")
    native = [
        (path or "<root>", m)
        for path, m in module.named_modules()
        if isinstance(m, _BatchNorm) or (isinstance(m, _InstanceNorm) and m.track_running_stats)
    ]
    if native:
        path, m = native[0]
        raise TypeError(
            f"set_policy cannot control torch layer {type(m).__name__} at {path!r} ({len(native)} such layer(s)); "
            "convert the model first, e.g. model = fewshot.norms.convert(model, 'batchnorm')"
        )
    saved: list[tuple[NormLayer, str]] = []
    for m in norm_layers(module):
        if m.fixed_policy is None:
            saved.append((m, m.policy))
            m.policy = policy
    return PolicyChange(saved)
