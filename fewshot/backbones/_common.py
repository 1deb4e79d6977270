"""Pieces shared by the backbones: building a norm layer by registry name and applying it with state threading.

Every backbone names its normalization layer by registry name plus keyword arguments (``norm="swbn",
norm_kwargs={"groups": 16}``) and builds it through :func:`fewshot.norms.create`. Layers that pass state between
layers (``passes_state = True``, Kalman normalization) need a prior predicted from the previous layer's posterior
through the convolution in between; :func:`apply_norm` does that and is a plain call for every other layer.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

import fewshot.norms as norms

__all__ = ["make_norm", "apply_norm", "check_image_size"]


def make_norm(norm: str, num_features: int, norm_kwargs: Mapping[str, Any] | None) -> nn.Module:
    """Build the normalization layer ``norm`` for ``num_features`` channels via :func:`fewshot.norms.create`."""
    return norms.create(norm, num_features, **dict(norm_kwargs or {}))


def apply_norm(norm: nn.Module, h: Tensor, posterior: Any, conv: nn.Module) -> tuple[Tensor, Any]:
    """Normalize ``h`` (N, C, H, W), threading state for ``passes_state`` layers.

    Args:
        norm: the normalization layer.
        h: the output of ``conv``, shape ``(N, C, H, W)``.
        posterior: the posterior of the previous state-passing norm layer, or ``None`` (first layer, or the
            previous layer passes no state).
        conv: the convolution that produced ``h``; a state-passing layer predicts its prior by propagating
            ``posterior`` through it (``norm.predict(posterior, conv)``).

    Returns:
        ``(y, posterior)``: the normalized tensor (same shape as ``h``) and this layer's posterior (``None`` for
        layers that pass no state).
    """
    if getattr(norm, "passes_state", False):
        prior = None if posterior is None else norm.predict(posterior, conv)
        return norm.forward_with_state(h, prior)
    return norm(h), None


def check_image_size(name: str, image_size: int, minimum: int) -> int:
    """Validate ``image_size`` (a positive int at least ``minimum``) for backbone ``name``; returns it."""
    if isinstance(image_size, bool) or not isinstance(image_size, int):
        raise TypeError(f"{name}.out_features expects image_size as an int (side in pixels), got {image_size!r}")
    if image_size < minimum:
        raise ValueError(
            f"{name} needs images of at least {minimum}x{minimum} pixels (its downsampling would leave no spatial "
            f"extent), got image_size={image_size}; use larger images or another backbone"
        )
    return image_size
