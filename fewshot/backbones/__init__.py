"""Backbones (feature extractors) and their registry ``BACKBONES``.

Registered names: ``conv4`` (Prototypical Networks' Conv-4, alias ``conv64f``), ``conv4_maml`` (MAML's strided
Omniglot Conv-4) and ``resnet12``. Every backbone takes its normalization layer by registry name plus keyword
arguments, threads the state of state-passing norm layers (Kalman normalization), and exposes
``out_features(image_size) -> int``.

Example:
    >>> from fewshot import backbones
    >>> net = backbones.create("conv4", in_channels=1, norm="batchnorm")
    >>> net.out_features(28)
    64
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import nn

from fewshot.backbones import conv4 as conv4
from fewshot.backbones import resnet12 as resnet12
from fewshot.backbones._registry import BACKBONES as BACKBONES
from fewshot.registry import accepted_options, check_options

__all__ = ["BACKBONES", "create", "names"]


def names(pattern: str | None = None) -> list[str]:
    """Sorted registered backbone names, optionally filtered by an fnmatch ``pattern``."""
    return BACKBONES.names(pattern)


def create(
    name: str,
    *,
    in_channels: int = 1,
    norm: str = "batchnorm",
    norm_kwargs: Mapping[str, Any] | None = None,
    **kwargs: Any,
) -> nn.Module:
    """Build the backbone registered as ``name``.

    Args:
        name: registry name (case-insensitive, ``_``/``-`` ignored), e.g. ``"conv4"``.
        in_channels: image channels.
        norm: normalization layer registry name (``fewshot.norms.names()``).
        norm_kwargs: keyword arguments for every norm layer, e.g. ``{"groups": 16}``.
        **kwargs: backbone options (``hidden`` for the Conv-4s; ``widths``, ``drop_rate``, ``dropblock_size``
            for ResNet-12).

    Returns:
        The backbone module; it maps ``(N, in_channels, H, W)`` images to ``(N, out_features(H))`` features.

    Raises:
        UnknownNameError: if ``name`` is not registered (the message lists close matches and all names).
        TypeError: if a keyword is not an option of that backbone (the message lists its options).
    """
    cls = BACKBONES.get(name)
    accepted, _ = accepted_options(cls, exclude=("in_channels", "norm", "norm_kwargs"))
    check_options(kwargs, accepted, owner=f"backbone {BACKBONES.canonical(name)!r}")
    return cls(in_channels, norm=norm, norm_kwargs=norm_kwargs, **kwargs)
