"""The normalization-layer registry ``NORM_LAYERS`` and the factory ``create``.

Layers register themselves with ``@NORM_LAYERS.register("name")`` at their definition; importing
:mod:`fewshot.norms` imports every layer module, so the registry is full after ``import fewshot.norms``.
Names are matched case-insensitively, ignoring ``_`` and ``-`` (see :class:`fewshot.registry.Registry`).
"""

from __future__ import annotations

from typing import Any

from fewshot.norms.base import NormLayer
from fewshot.registry import Registry

__all__ = ["NORM_LAYERS", "create", "names"]

NORM_LAYERS = Registry("normalization layer")


def create(name: str, num_features: int, **kwargs: Any) -> NormLayer:
    """Build the registered normalization layer ``name``.

    Args:
        name: a registered name (``fewshot.norms.names()``), e.g. ``"batchnorm"``, ``"swbn"``.
        num_features: channel count ``C`` of the ``(N, C)`` or ``(N, C, H, W)`` input.
        **kwargs: common options (eps, momentum, affine, track_running_stats, policy, device, dtype) and the
            layer's own options (see its docstring). Unknown options raise a TypeError listing the accepted ones.

    Returns:
        The new layer (a :class:`~fewshot.norms.base.NormLayer`).

    Raises:
        fewshot.errors.UnknownNameError: ``name`` is not registered (the message lists close matches and every
            registered name).

    Example:
        >>> layer = create("batchnorm", 8, momentum=None)
        >>> layer.momentum is None
        True
    """
    return NORM_LAYERS.get(name)(num_features, **kwargs)


def names(pattern: str | None = None) -> list[str]:
    """Sorted registered layer names, optionally filtered by an fnmatch ``pattern`` such as ``"batchnorm*"``."""
    return NORM_LAYERS.names(pattern)
