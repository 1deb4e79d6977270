"""Normalization layers compute in float32, also under bfloat16 autocast (config ``precision: bf16``).

Statistics, covariances, matrix roots (Newton-Schulz, eigendecompositions) and SWBN's whitening update lose
too much in bfloat16's 8-bit mantissa: a 64x64 covariance inverted square root is not even symmetric positive
definite after rounding. So :func:`fp32_forward` wraps a layer's ``forward``: when autocast is on for the
input's device it turns autocast off and casts the input to float32; the float32 output is cast back by the
next convolution (autocast). Without autocast it calls the forward unchanged (no cost), so the plain
``nn.Module`` path and ``torch.func.functional_call`` (second-order MAML) see exactly the undecorated layer.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

import torch
from torch import Tensor

__all__ = ["fp32_forward", "autocast_enabled"]

F = TypeVar("F", bound=Callable[..., Tensor])


def autocast_enabled(x: Tensor) -> bool:
    """Whether autocast is on for the device type of ``x``."""
    try:
        return torch.is_autocast_enabled(x.device.type)
    except TypeError:  # torch < 2.4: no device-type argument
        return torch.is_autocast_cpu_enabled() if x.device.type == "cpu" else torch.is_autocast_enabled()


def fp32_forward(forward: F) -> F:
    """Decorate a norm layer's ``forward(self, x, ...)`` so that it runs in float32 under autocast."""

    @functools.wraps(forward)
    def wrapper(self, x: Tensor, *args, **kwargs) -> Tensor:  # noqa: ANN001, ANN002, ANN003
        if not autocast_enabled(x):
            return forward(self, x, *args, **kwargs)
        with torch.autocast(x.device.type, enabled=False):
            return forward(self, x.float(), *args, **kwargs)

    return wrapper  # type: ignore[return-value]
