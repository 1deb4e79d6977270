"""Group Whitening (``groupwhiten``): per-sample whitening of channel groups, no batch dependence."""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from fewshot.norms import whitening_math as WM
from fewshot.norms.base import NormLayer
from fewshot.norms.registry import NORM_LAYERS

__all__ = ["GroupWhitening", "GroupWhiteningStats"]

DEFAULT_GROUPS = 64


class GroupWhiteningStats(NamedTuple):
    """Per-sample statistics: the centred group rows ``(N, G, k)`` and the whitening matrices ``(N, G, G)``."""

    centred: Tensor
    matrix: Tensor


@NORM_LAYERS.register("groupwhiten")
class GroupWhitening(NormLayer):
    """Group Whitening: each sample's channel groups are centred and decorrelated from each other.

    Huang, Zhou, Liu, Zhu, Shao, "Group Whitening: Balancing Learning Efficiency and Representational
    Capacity", CVPR 2021, arXiv 2009.13333. For every sample ``n`` separately, its ``C·H·W`` values are
    arranged as ``G`` rows (one per group of ``C/G`` consecutive channels, ``k = C/G·H·W`` values each); the rows
    are centred, ``Σ_n = X_c X_cᵀ / k + eps·I`` (``G × G``), and ``W_n = P_T / sqrt(tr Σ_n)`` by IterNorm's
    Newton iterations (:func:`~fewshot.norms.whitening_math.newton_schulz_inv_sqrt`); ``y = γ ⊙ W_n X_c + β``
    with a per-channel affine. Nothing depends on the other samples of the batch and there is no running state,
    so train and eval modes agree and every statistics policy gives the same result (``per_sample = True``).

    Note the whitened dimension here is the *number of groups* ``G`` (rows decorrelated from each other), while
    in SWBN, DBN and IterNorm it is the group size; hence its own option is ``groups``
    (``group_size = C // groups`` is accepted too). The ridge ``eps·I`` (absent
    from the official code) makes ``groups=1`` exactly LayerNorm with the same ``eps`` and keeps constant
    samples finite. With ``T = 5`` the output is under-whitened like IterNorm (diagonal ≈ 0.59 for 64
    isotropic groups); use ``T ≥ 10`` when whiteness itself matters.

    Args:
        num_features, eps, affine, policy, device, dtype: see :class:`~fewshot.norms.base.NormLayer`
            (``momentum`` and ``track_running_stats`` have no effect: there is no running state).
        groups: number of groups ``G`` (default 64, the official ImageNet/ResNeXt setting; more than
            ``num_features`` → one channel per group; see :func:`~fewshot.norms.whitening_math.resolve_group_size`).
        T: Newton iterations (default 5, as in the paper).

    Shape:
        input ``(N, C)`` or ``(N, C, H, W)``; output the same (NCHW-contiguous).

    Example:
        >>> import torch
        >>> layer = GroupWhitening(32, groups=8)
        >>> layer(torch.randn(1, 32, 4, 4)).shape
        torch.Size([1, 32, 4, 4])
    """

    per_sample = True
    reproduces_bn_after_convert = False
    hparams = ("groups", "group_size", "T")

    def _init_layer(
        self,
        factory_kwargs: dict[str, Any],
        *,
        groups: int | None = None,
        group_size: int | None = None,
        T: int = 5,  # noqa: N803
    ) -> None:
        name = type(self).__name__
        if isinstance(T, bool) or not isinstance(T, int) or T < 0:
            raise ValueError(f"{name}: T (Newton iterations) must be an int >= 0, got {T!r}")
        groups = WM.native_grouping(self.num_features, groups, group_size, native="groups", layer=name)
        self.groups = WM.resolve_group_size(self.num_features, groups, DEFAULT_GROUPS, layer=name, option="groups")
        self.group_size = self.num_features // self.groups
        self.T = T

    def _batch_stats(self, x: Tensor) -> GroupWhiteningStats:
        centred, sigma = WM.per_sample_group_covariance(x, self.groups)
        return GroupWhiteningStats(centred, WM.newton_schulz_inv_sqrt(WM.add_ridge(sigma, self.eps), self.T))

    def _normalize(self, x: Tensor, stats: GroupWhiteningStats) -> Tensor:
        y = (stats.matrix @ stats.centred).reshape(x.shape)
        return _like_memory_format(y, x)


def _like_memory_format(y: Tensor, x: Tensor) -> Tensor:
    """``y`` in ``x``'s memory format when ``x`` is channels_last (4-D); otherwise ``y`` itself.

    Under ``vmap`` memory formats cannot be queried or set (and do not matter): ``y`` is returned unchanged. A
    tensor that ``grad`` wraps inside ``vmap`` answers the query but refuses the conversion, so both are guarded.
    """
    if x.dim() != 4:
        return y
    try:
        channels_last = not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last)
        return y.contiguous(memory_format=torch.channels_last) if channels_last else y
    except RuntimeError:  # inside vmap (functorch's "NYI: Tensor.clone(memory_format) inside vmap")
        return y
