"""Iterative Normalization (``iternorm``): batch whitening by Newton iterations on the trace-normalized covariance."""

from __future__ import annotations

from typing import Any

from torch import Tensor

from fewshot.norms import whitening_math as WM
from fewshot.norms.dbn import BatchWhitening
from fewshot.norms.registry import NORM_LAYERS

__all__ = ["IterNorm"]


@NORM_LAYERS.register("iternorm")
class IterNorm(BatchWhitening):
    """Iterative Normalization: approximate ZCA whitening of each channel group with ``T`` Newton steps.

    Huang, Zhou, Zhu, Liu, Shao, "Iterative Normalization: Beyond Standardization towards Efficient
    Whitening", CVPR 2019, arXiv 1904.03441. Per group: ``Σ = X_c X_cᵀ/m + eps·I``, ``Σ_N = Σ / tr Σ``,
    ``P_0 = I``, ``P_k = (3 P_{k−1} − P_{k−1}³ Σ_N)/2`` for ``k = 1..T``, ``W = P_T / sqrt(tr Σ)``,
    ``y = γ ⊙ W X_c + β``. Gradients go through the mean, the covariance, the trace and every Newton step by
    plain autograd (no hand-written backward, so double backward for second-order MAML is exact). Running
    mean and running whitening matrix (EMA, ``momentum`` 0.1, init 0 and ``I``) are used in eval mode (see
    :class:`~fewshot.norms.dbn.BatchWhitening`).

    With ``T = 5`` IterNorm deliberately under-whitens: each step multiplies a direction by at most 1.5, so even
    isotropic data of a 64-channel group comes out with variance ≈ 0.586, not 1 (γ compensates in training).
    The uncoupled iteration is unstable when run far past convergence (NaN by ``T ≈ 15`` in float32), so keep
    ``T`` in 3–8 as the authors recommend.

    Args:
        num_features, eps, momentum, affine, track_running_stats, policy, device, dtype: see
            :class:`~fewshot.norms.base.NormLayer` (``eps`` is the ridge added to ``Σ``).
        group_size: channels per group ``g`` (default 64, the authors' recommendation; larger than
            ``num_features`` → one group; see :func:`~fewshot.norms.whitening_math.resolve_group_size`).
        T: number of Newton iterations (default 5, as in the paper and both official implementations).

    Shape:
        input ``(N, C)`` or ``(N, C, H, W)``; output the same. Buffers ``running_mean (C,)``,
        ``running_wm (G, g, g)``.

    Example:
        >>> import torch
        >>> layer = IterNorm(32, group_size=16, T=5)
        >>> layer(torch.randn(8, 32, 4, 4)).shape
        torch.Size([8, 32, 4, 4])
    """

    hparams = ("group_size", "groups", "T")
    default_group_size = 64

    def _init_layer(
        self,
        factory_kwargs: dict[str, Any],
        *,
        group_size: int | None = None,
        groups: int | None = None,
        T: int = 5,  # noqa: N803
    ) -> None:
        if isinstance(T, bool) or not isinstance(T, int) or T < 0:
            raise ValueError(f"{type(self).__name__}: T (Newton iterations) must be an int >= 0, got {T!r}")
        self._init_groups(group_size, groups)
        self.T = T

    def _inv_sqrt(self, sigma: Tensor) -> Tensor:
        return WM.newton_schulz_inv_sqrt(sigma, self.T)
