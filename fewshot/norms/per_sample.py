"""Per-sample normalization layers: ``instancenorm``, ``layernorm`` and ``groupnorm``.

They normalize each example with its own moments, so outputs never depend on the rest of the batch
(non-transductive by construction, any batch size including 1). They keep no running state, ignore the
statistics policy (``per_sample = True``) and use a per-channel affine (``weight``, ``bias`` of shape ``(C,)``),
as GroupNorm does and as TaskNorm's LN variant uses for conv features. Variances are biased.
Since the statistics are per example, an eval-mode layer cannot reproduce a BatchNorm after ``convert``.
"""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fewshot.norms import functional as FN
from fewshot.norms import whitening_math as WM
from fewshot.norms.base import NormLayer
from fewshot.norms.functional import Moments
from fewshot.norms.registry import NORM_LAYERS

__all__ = ["GroupNorm", "InstanceNorm", "LayerNorm", "resolve_groups"]


def resolve_groups(num_features: int, groups: int) -> int:
    """The group count actually used: the largest divisor of ``num_features`` that is ``≤ groups``.

    So ``groups=32`` gives 32 groups for 64 channels, 24 for 48 channels, 8 for 8 channels (one channel per
    group: instance-norm moments) and 25 for 50 channels.
    """
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    return max(g for g in range(1, min(groups, num_features) + 1) if num_features % g == 0)


def _group_standardize(x: Tensor, moments: Moments, eps: float) -> Tensor:
    """Standardize ``x`` (N, C[, H, W]) with per-sample group moments ``(N, G)``."""
    per_group = x.shape[1] // moments.mean.shape[1]  # channels per group
    mean = FN.per_sample_channel(moments.mean.repeat_interleave(per_group, dim=1), x)
    var = FN.per_sample_channel(moments.var.repeat_interleave(per_group, dim=1), x)
    return FN.standardize(x, mean, var, eps)  # broadcast (N, C, 1, 1): keeps x's memory format (channels_last)


class _PerSampleNorm(NormLayer):
    per_sample = True
    reproduces_bn_after_convert = False


@NORM_LAYERS.register("instancenorm")
class InstanceNorm(_PerSampleNorm):
    """Instance Normalization: each example and channel normalized over its own ``(H, W)``.

    Ulyanov, Vedaldi & Lempitsky, "Instance Normalization: The Missing Ingredient for Fast Stylization",
    arXiv 1607.08022, 2016. Equals ``F.instance_norm`` followed by a per-channel affine (default
    ``affine=True`` here, unlike ``nn.InstanceNorm2d``). On ``(N, C)`` input each channel holds a single value,
    so the normalized output is 0 and the layer returns ``bias``.

    Args: see :class:`~fewshot.norms.base.NormLayer` (no layer-specific options; no running state).

    Shape:
        input ``(N, C)`` or ``(N, C, H, W)``, any ``N ≥ 1``; output the same shape.

    Example:
        >>> import torch
        >>> InstanceNorm(8)(torch.randn(1, 8, 4, 4)).shape
        torch.Size([1, 8, 4, 4])
    """

    def _batch_stats(self, x: Tensor) -> Moments:
        return FN.instance_moments(x)

    def _normalize(self, x: Tensor, stats: Moments) -> Tensor:
        return FN.standardize(x, FN.per_sample_channel(stats.mean, x), FN.per_sample_channel(stats.var, x), self.eps)


@NORM_LAYERS.register("layernorm")
class LayerNorm(_PerSampleNorm):
    """Layer Normalization: each example normalized over all of its ``(C, H, W)`` values.

    Ba, Kiros & Hinton, "Layer Normalization", arXiv 1607.06450, 2016. Equals ``F.layer_norm(x, x.shape[1:])``
    followed by a per-channel affine (not PyTorch's per-element one), i.e. GroupNorm with one group.

    Args: see :class:`~fewshot.norms.base.NormLayer` (no layer-specific options; no running state).

    Shape:
        input ``(N, C)`` or ``(N, C, H, W)``, any ``N ≥ 1``; output the same shape.

    Example:
        >>> import torch
        >>> LayerNorm(8)(torch.randn(1, 8)).shape
        torch.Size([1, 8])
    """

    def _batch_stats(self, x: Tensor) -> Moments:
        return FN.group_moments(x, 1)

    def _normalize(self, x: Tensor, stats: Moments) -> Tensor:
        return _group_standardize(x, stats, self.eps)


@NORM_LAYERS.register("groupnorm")
class GroupNorm(_PerSampleNorm):
    """Group Normalization: each example normalized over groups of consecutive channels (and ``H, W``).

    Wu & He, "Group Normalization", ECCV 2018, arXiv 1803.08494. Equals ``F.group_norm``.

    Args:
        groups: requested number of groups (default 32). The layer uses the largest divisor of
            ``num_features`` that is ``≤ groups`` (see :func:`resolve_groups`), so the default works for any
            channel count; ``layer.groups`` is the count used. ``groups=1`` is LayerNorm, ``groups=C``
            InstanceNorm.
        group_size: channels per group instead (exactly ``groups = C // group_size``; see
            :func:`~fewshot.norms.whitening_math.native_grouping`).
        Other arguments: see :class:`~fewshot.norms.base.NormLayer` (no running state).

    Shape:
        input ``(N, C)`` or ``(N, C, H, W)``, any ``N ≥ 1``; output the same shape.

    Example:
        >>> GroupNorm(48).groups
        24
    """

    hparams = ("groups", "group_size")

    def _init_layer(
        self, factory_kwargs: dict[str, Any], *, groups: int | None = None, group_size: int | None = None
    ) -> None:
        groups = WM.native_grouping(self.num_features, groups, group_size, native="groups", layer="GroupNorm")
        self.groups = resolve_groups(self.num_features, 32 if groups is None else groups)
        self.group_size = self.num_features // self.groups

    def _batch_stats(self, x: Tensor) -> Moments:
        return FN.group_moments(x, self.groups)

    def _normalize(self, x: Tensor, stats: Moments) -> Tensor:
        return _group_standardize(x, stats, self.eps)
