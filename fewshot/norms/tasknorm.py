"""TaskNorm-I: context-set batch moments pooled with each example's instance moments.

Bronskill, Gordon, Requeima, Nowozin & Turner, "TaskNorm: Rethinking Batch Normalization for
Meta-Learning", ICML 2020, arXiv 2003.03284 (official code: cambridge-mlg/cnaps, TaskNorm-I only).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fewshot.norms import functional as FN
from fewshot.norms.base import NormLayer
from fewshot.norms.registry import NORM_LAYERS

__all__ = ["ContextMoments", "TaskNorm", "pooled_moments"]


class ContextMoments(NamedTuple):
    """Per-channel moments of the context (support) set and its size ``|D|`` (examples; a 0-dim tensor, so the
    statistics are values ``torch.func`` transforms can return)."""

    mean: Tensor
    var: Tensor
    size: Tensor


def pooled_moments(alpha: Tensor, context: FN.Moments, instance: FN.Moments) -> FN.Moments:
    """Mean and variance of the mixture ``α·N(μ_BN, σ²_BN) + (1 − α)·N(μ_+, σ²_+)`` (law of total variance).

    ``μ_TN = α μ_BN + (1 − α) μ_+`` and
    ``σ²_TN = α (σ²_BN + (μ_BN − μ_TN)²) + (1 − α) (σ²_+ + (μ_+ − μ_TN)²)`` (Bronskill et al. 2020, §4.2).

    Args:
        alpha: blending weight, a scalar or ``(1,)`` tensor in [0, 1].
        context: context moments, ``(C,)`` each.
        instance: per-example moments, ``(N, C)`` each.

    Returns:
        ``Moments(mean (N, C), var (N, C))``.
    """
    mu_bn, var_bn = context.mean[None], context.var[None]
    mean = alpha * mu_bn + (1 - alpha) * instance.mean
    var = alpha * (var_bn + (mu_bn - mean) ** 2) + (1 - alpha) * (instance.var + (instance.mean - mean) ** 2)
    return FN.Moments(mean, var)


@NORM_LAYERS.register("tasknorm")
class TaskNorm(NormLayer):
    """TaskNorm-I (Bronskill et al., "TaskNorm: Rethinking Batch Normalization for Meta-Learning", ICML 2020,
    arXiv 2003.03284).

    Each example ``x_i`` is normalized with the pooled moments of the context batch moments
    ``(μ_BN, σ²_BN)`` (per channel over ``(N, H, W)`` of the context set) and its own instance moments
    ``(μ_+, σ²_+)`` (per channel over ``(H, W)``); see :func:`pooled_moments`. The blend is
    ``α = sigmoid(scale·|D| + offset)`` with ``|D|`` the number of context examples and ``scale``, ``offset``
    learnable per-layer scalars initialized to 0 (``α = 0.5`` at init, as in the official code).
    ``α = 1`` gives MetaBN (context BN moments), ``α = 0`` instance normalization.

    Where the context comes from:

    * ``policy="support"`` (the intended use, non-transductive): the support set's statistics, collected with
      ``fewshot.norms.collect(model)`` and applied to each query example inside ``fewshot.norms.using(model,
      stats)`` together with that example's own instance moments; query outputs do not depend on other queries.
    * ``policy="running"`` or ``"transductive"``: the current batch itself, in train and eval mode (TaskNorm keeps no
      running state, ``track_running_stats`` is always False); this is transductive.

    Differences from the official code: variances are biased (the official code uses ``torch.var``'s unbiased
    default), so that ``α = 1`` equals BN/MetaBN and ``α = 0`` equals ``F.instance_norm`` exactly; the context
    is passed as a value (``collect``/``using``) instead of train/eval switching. The running buffers of the official
    ``BatchNorm2d`` base class are never used there and do not exist here.

    Args: see :class:`~fewshot.norms.base.NormLayer` (no layer-specific options).

    Shape:
        input ``(N, C)`` or ``(N, C, H, W)``; ``N ≥ 2`` for a context forward, any ``N`` inside ``using``.

    Example:
        >>> import torch
        >>> from fewshot.norms import collect, using
        >>> layer = TaskNorm(8, policy="support")
        >>> with collect(layer) as stats:
        ...     _ = layer(torch.randn(5, 8, 4, 4))
        >>> with using(layer, stats):
        ...     layer(torch.randn(1, 8, 4, 4)).shape
        torch.Size([1, 8, 4, 4])
    """

    reproduces_bn_after_convert = False

    def _init_layer(self, factory_kwargs: dict[str, Any]) -> None:
        self.scale = nn.Parameter(torch.zeros(1, **factory_kwargs))
        self.offset = nn.Parameter(torch.zeros(1, **factory_kwargs))

    def reset_parameters(self) -> None:
        """Affine weight ones, bias zeros; ``scale`` and ``offset`` zeros (``α = 0.5``)."""
        super().reset_parameters()
        nn.init.zeros_(self.scale)
        nn.init.zeros_(self.offset)

    def alpha(self, context_size: int) -> Tensor:
        """``sigmoid(scale·context_size + offset)``, shape ``(1,)``."""
        return torch.sigmoid(self.scale * context_size + self.offset)

    def _batch_stats(self, x: Tensor) -> ContextMoments:
        moments = FN.batch_moments(x)
        return ContextMoments(moments.mean, moments.var, torch.full((), x.shape[0], dtype=x.dtype, device=x.device))

    def _normalize(self, x: Tensor, stats: ContextMoments) -> Tensor:
        context = FN.Moments(stats.mean, stats.var)
        pooled = pooled_moments(self.alpha(stats.size), context, FN.instance_moments(x))
        return FN.standardize(x, FN.per_sample_channel(pooled.mean, x), FN.per_sample_channel(pooled.var, x), self.eps)
