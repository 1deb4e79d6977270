"""Pure moment and standardization math shared by every normalization layer.

Every function here is pure (it never mutates an argument), is written from primitive differentiable ops
(``mean``, ``var``-as-mean-of-squares, ``rsqrt``) rather than the fused ``F.batch_norm`` (fused BN gives wrong
second-order meta-gradients under ``vmap``), and is vmap-legal: no ``.item()``, no value-dependent Python
branches, shapes and group counts are plain Python ints. Whitening math lives in
:mod:`fewshot.norms.whitening_math`.

Shapes: ``x`` is ``(N, C)`` or ``(N, C, H, W)``; "per channel" tensors are ``(C,)``; "per sample" tensors are
``(N, C)`` (instance moments) or ``(N, G)`` (group moments). ``m = N·H·W`` is the number of values per channel
that batch statistics see.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from fewshot.host_reads import defers_host_reads

__all__ = [
    "Moments",
    "affine",
    "batch_moments",
    "ema",
    "group_moments",
    "instance_moments",
    "per_channel",
    "per_sample_channel",
    "reduce_dims",
    "samples_per_channel",
    "standardize",
    "unbias_variance",
]


class Moments(NamedTuple):
    """A mean and a variance of the same shape: ``(C,)`` per channel, ``(N, C)`` or ``(N, G)`` per sample."""

    mean: Tensor
    var: Tensor


def reduce_dims(x: Tensor) -> tuple[int, ...]:
    """The dimensions batch statistics reduce over: ``(0,)`` for ``(N, C)``, ``(0, 2, 3)`` for ``(N, C, H, W)``."""
    return (0, *range(2, x.dim()))


def samples_per_channel(x: Tensor) -> int:
    """``m = N·H·W``: how many values of each channel batch statistics see (a Python int)."""
    return x.numel() // x.shape[1]


def per_channel(v: Tensor, x: Tensor) -> Tensor:
    """View a per-channel ``(C,)`` tensor so it broadcasts against ``x``: ``(1, C)`` or ``(1, C, 1, 1)``."""
    return v.reshape(1, -1, *([1] * (x.dim() - 2)))


def per_sample_channel(v: Tensor, x: Tensor) -> Tensor:
    """View a per-sample-and-channel ``(N, C)`` tensor so it broadcasts against ``x``."""
    return v.reshape(*v.shape[:2], *([1] * (x.dim() - 2)))


def batch_moments(x: Tensor, *, unbiased: bool = False) -> Moments:
    """Per-channel mean and variance over ``(N, H, W)``.

    Args:
        x: ``(N, C)`` or ``(N, C, H, W)``.
        unbiased: divide by ``m - 1`` instead of ``m`` (BN normalizes with the biased variance).

    Returns:
        ``Moments(mean (C,), var (C,))``. The variance is the mean of squared deviations, computed in two
        passes (centre first), which is stable and gives exactly 0 for a constant channel.
    """
    dims = reduce_dims(x)
    mean = x.mean(dim=dims)
    centred = x - per_channel(mean, x)
    var = (centred * centred).mean(dim=dims)
    if unbiased:
        var = unbias_variance(var, samples_per_channel(x))
    return Moments(mean, var)


def instance_moments(x: Tensor) -> Moments:
    """Per-sample, per-channel mean and (biased) variance over ``(H, W)``.

    Args:
        x: ``(N, C, H, W)``, or ``(N, C)`` where each channel holds one value, so the mean is ``x`` itself and
            the variance is 0 (instance normalization of a vector maps every entry to 0).

    Returns:
        ``Moments(mean (N, C), var (N, C))``.
    """
    if x.dim() == 2:
        return Moments(x, torch.zeros_like(x))
    mean = x.mean(dim=(2, 3))
    centred = x - mean[:, :, None, None]
    return Moments(mean, (centred * centred).mean(dim=(2, 3)))


def group_moments(x: Tensor, groups: int) -> Moments:
    """Per-sample mean and (biased) variance over groups of ``C / groups`` consecutive channels (and H, W).

    ``groups = 1`` gives layer-norm moments, ``groups = C`` instance-norm moments (Wu & He, "Group
    Normalization", ECCV 2018, arXiv 1803.08494).

    Args:
        x: ``(N, C)`` or ``(N, C, H, W)`` with ``C`` divisible by ``groups``.
        groups: number of channel groups (a Python int).

    Returns:
        ``Moments(mean (N, groups), var (N, groups))``.
    """
    n, c = x.shape[:2]
    if c % groups != 0:
        raise ValueError(f"groups={groups} must divide the channel count {c}; pick a divisor of {c}")
    xg = x.reshape(n, groups, -1)
    mean = xg.mean(dim=2)
    centred = xg - mean[:, :, None]
    return Moments(mean, (centred * centred).mean(dim=2))


def unbias_variance(var: Tensor, m: int | Tensor) -> Tensor:
    """Bessel's correction: ``var · m / (m − 1)`` for a biased variance over ``m`` values (``m ≥ 2``).

    ``m`` may be a 0-dim tensor (a statistics' ``count``); on a device it is checked by an asynchronous
    device-side assertion instead of a host read (:mod:`fewshot.host_reads`).
    """
    message = "an unbiased variance needs at least 2 values per channel"
    if isinstance(m, Tensor) and defers_host_reads(m):
        torch._assert_async(m >= 2, message)
    elif m < 2:
        raise ValueError(f"{message}, got m={m}")
    return var * (m / (m - 1))


def standardize(x: Tensor, mean: Tensor, var: Tensor, eps: float) -> Tensor:
    """``(x − mean) / sqrt(var + eps)`` with ``mean`` and ``var`` already shaped to broadcast against ``x``."""
    return (x - mean) * torch.rsqrt(var + eps)


def affine(x_hat: Tensor, weight: Tensor | None, bias: Tensor | None) -> Tensor:
    """``weight ⊙ x_hat + bias`` with per-channel ``(C,)`` weight and bias; ``None`` skips that part."""
    if weight is not None:
        x_hat = x_hat * per_channel(weight, x_hat)
    if bias is not None:
        x_hat = x_hat + per_channel(bias, x_hat)
    return x_hat


def ema(running: Tensor, value: Tensor, factor: float | Tensor) -> Tensor:
    """PyTorch's running-average convention: ``(1 − factor)·running + factor·value`` (a new tensor).

    ``factor`` is BN's "momentum" (0.1 by default), or ``1/num_batches_tracked`` for a cumulative average.
    """
    return (1 - factor) * running + factor * value
