"""Model-wide switches for normalization layers: ``frozen_stats`` and ``set_policy``; and ``batch_dependent``.

* ``frozen_stats(model)``: no layer changes any buffer or state inside the block.
* ``set_policy(model, policy)``: sets the statistics policy of every layer; usable as a plain call or as a
  context manager that restores the previous policies.

Statistics passed between forwards (support → query, tasks → one state update) are values, not switches:
see :mod:`fewshot.norms.flow`. Both act on every :class:`~fewshot.norms.base.NormLayer` in ``model.modules()``
(the model itself included) and restore what they changed even when the block raises; they nest.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType

from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.instancenorm import _InstanceNorm

from fewshot.norms.base import NormLayer
from fewshot.norms.policy import Policy

__all__ = ["PolicyChange", "batch_dependent", "frozen_stats", "norm_layers", "notify_lr_scale", "set_policy"]


def norm_layers(module: nn.Module) -> list[NormLayer]:
    """Every NormLayer in ``module.modules()`` (``module`` itself included), in registration order."""
    return [m for m in module.modules() if isinstance(m, NormLayer)]


def batch_dependent(module: nn.Module) -> bool:
    """Whether a forward of ``module`` now mixes its input rows through batch statistics: some NormLayer would
    normalize with its own batch's statistics (:meth:`NormLayer.batch_dependent`), or a torch BatchNorm is in
    training mode or keeps no running statistics. Then a query batch cannot be padded or split without changing
    its outputs (``fewshot.learners.base.rowwise`` checks this).

    Example:
        >>> from fewshot.norms import create
        >>> layer = create("tasknorm", 8).eval()  # no running state: its context is the batch it is given
        >>> batch_dependent(layer), batch_dependent(create("batchnorm", 8).eval())
        (True, False)
    """
    for m in module.modules():
        if isinstance(m, NormLayer) and m.batch_dependent():
            return True
        if isinstance(m, _BatchNorm) and (m.training or m.running_mean is None):
            return True
    return False


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


class PolicyChange:
    """The result of :func:`set_policy`: the change is already applied; ``with``/``restore()`` undoes it."""

    def __init__(self, saved: list[tuple[NormLayer, Policy]]) -> None:
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


def set_policy(module: nn.Module, policy: Policy | str) -> PolicyChange:
    """Set the statistics policy of every NormLayer in ``module``.

    Layers whose policy is part of their definition (``fixed_policy``, e.g. ``batchnorm_transductive``) keep
    it; per-sample layers accept any policy and ignore it. Native torch BatchNorm layers (and InstanceNorm with
    running statistics) cannot follow a policy, so a module containing one raises a TypeError (convert first).

    Args:
        module: any ``nn.Module``.
        policy: a :class:`~fewshot.norms.policy.Policy` or its name (``"running"``, ``"support"``,
            ``"transductive"``).

    Returns:
        A :class:`PolicyChange`: ignore it for a permanent change, or use ``with set_policy(model, p):`` (or
        call ``.restore()``) to put the previous policies back.

    Example:
        >>> from fewshot.norms import create
        >>> layer = create("batchnorm", 4)
        >>> with set_policy(layer, "transductive"):
        ...     str(layer.policy)
        'transductive'
        >>> str(layer.policy)
        'running'
    """
    policy = Policy.parse(policy, where="set_policy: policy")
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
    saved: list[tuple[NormLayer, Policy]] = []
    for m in norm_layers(module):
        if m.fixed_policy is None:
            saved.append((m, m.policy))
            m.policy = policy
    return PolicyChange(saved)


def notify_lr_scale(module: nn.Module, factor: float) -> None:
    """Tell every NormLayer of ``module`` that the learning rate is now ``factor`` × its initial value.

    The trainer calls it whenever its schedule changes the rate (and after a resume); layers with rates of
    their own that follow the learning rate implement :meth:`NormLayer.on_lr_scale` (SWBN keeps ``α / lr``
    constant), all others ignore it.

    Example:
        >>> from fewshot.norms import create
        >>> layer = create("swbn", 16)
        >>> notify_lr_scale(layer, 0.5)
        >>> layer.whitening_rate
        0.0005
    """
    for layer in norm_layers(module):
        layer.on_lr_scale(factor)
