"""Mergeable batch statistics: counts with means and (co)variances, combined exactly in any order.

A normalization layer's statistics ``S = layer.stats(x)`` are values: they can be passed from a support forward to
a query forward, stacked over a meta-batch under ``vmap``, or summed over processes. Merging the statistics of
disjoint batches gives the statistics of their union, so a state update from the merged ``S`` equals the update
from one batch holding all the samples (to rounding). The merge is Chan, Golub & LeVeque's pairwise update
("Updating formulae and a pairwise algorithm for computing sample variances", 1979), written with the biased
(co)variance ``M2 / m`` that the layers store:

    δ = μ_b − μ_a,  m = m_a + m_b,  μ = μ_a + δ·m_b/m,  M2 = M2_a + M2_b + δ δᵀ·m_a·m_b/m

(stable when ``|μ| ≫ σ``, unlike merging ``Σx, Σx²``). Counts are float64 0-dim tensors (exact for integers below
2⁵³), so statistics stay tensors under ``vmap`` and in an all-reduce. See docs/norm-state.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["count_of", "merge_covariances", "merge_moments"]


def count_of(x: Tensor) -> Tensor:
    """``m = N·H·W`` (values per channel batch statistics see) as a float64 0-dim tensor on ``x``'s device."""
    return torch.full((), x.numel() // x.shape[1], dtype=torch.float64, device=x.device)


def _weights(count_a: Tensor, count_b: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    total = count_a + count_b
    return total, count_b / total, count_a * count_b / total


def merge_moments(parts: Sequence[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Tensor, Tensor]:
    """Merge per-channel ``(count, mean (C,), biased var (C,))`` of disjoint batches into those of their union.

    Args:
        parts: one or more ``(count, mean, var)``; a single part is returned unchanged (bit for bit).

    Returns:
        ``(count, mean, var)`` of all the samples together.

    Example:
        >>> x = torch.randn(10, 3, dtype=torch.float64)
        >>> a, b = x[:4], x[4:]
        >>> c, mean, var = merge_moments([(count_of(a), a.mean(0), a.var(0, unbiased=False)),
        ...                               (count_of(b), b.mean(0), b.var(0, unbiased=False))])
        >>> int(c), bool(torch.allclose(mean, x.mean(0))), bool(torch.allclose(var, x.var(0, unbiased=False)))
        (10, True, True)
    """
    if not parts:
        raise ValueError("merge_moments needs at least one (count, mean, var), got none")
    count, mean, var = parts[0]
    for count_b, mean_b, var_b in parts[1:]:
        total, frac_b, cross = _weights(count, count_b)
        delta = mean_b - mean
        m2 = var * count + var_b * count_b + delta * delta * cross
        count, mean = total, mean + delta * frac_b.to(delta.dtype)
        var = (m2 / total).to(delta.dtype)
    return count, mean, var


def merge_covariances(parts: Sequence[tuple[Tensor, Tensor, Tensor]], group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Merge ``(count, mean (C,), biased group covariance (G, g, g))`` of disjoint batches (Chan's rule, §module).

    Args:
        parts: one or more ``(count, mean, cov)``; a single part is returned unchanged.
        group_size: ``g``, the channels per group (``C = G·g``).

    Returns:
        ``(count, mean, cov)`` of all the samples together.
    """
    if not parts:
        raise ValueError("merge_covariances needs at least one (count, mean, cov), got none")
    count, mean, cov = parts[0]
    for count_b, mean_b, cov_b in parts[1:]:
        total, frac_b, cross = _weights(count, count_b)
        delta = (mean_b - mean).reshape(-1, group_size)
        m2 = cov * count + cov_b * count_b + delta[:, :, None] * delta[:, None, :] * cross
        count, mean = total, mean + (mean_b - mean) * frac_b.to(mean.dtype)
        cov = (m2 / total).to(mean.dtype)
    return count, mean, cov
