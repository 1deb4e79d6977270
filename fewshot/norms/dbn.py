"""Batch whitening with a running whitening matrix: the shared layer shell, and Decorrelated BN (``dbn``, ZCA).

:class:`BatchWhitening` holds everything DBN and IterNorm share (grouping, running mean and running whitening
matrix, the folded whitening + affine product); a subclass only supplies the inverse square root of the group
covariance. :class:`DBN` computes it exactly by eigendecomposition; IterNorm (``fewshot.norms.iternorm``) by
Newton iterations.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple

import torch
from torch import Tensor

from fewshot.norms import functional as FN
from fewshot.norms import whitening_math as WM
from fewshot.norms.base import NormLayer
from fewshot.norms.registry import NORM_LAYERS
from fewshot.norms.sufficient import count_of, merge_covariances

__all__ = ["BatchWhitening", "DBN", "WhiteningStats"]


class WhiteningStats(NamedTuple):
    """Statistics of a batch-whitening forward.

    Attributes:
        count: values per channel (float64 0-dim; 0 for statistics read from the state).
        mean: ``(C,)``.
        cov: ``(G, g, g)`` biased covariance of the centred batch (``None`` from the state).
        matrix: ``(G, g, g)`` the whitening matrix of ``cov + eps·I`` (differentiable; the running average from
            the state).
    """

    count: Tensor
    mean: Tensor
    cov: Tensor | None
    matrix: Tensor


class BatchWhitening(NormLayer):
    """Shell of the batch-whitening layers: ``y = γ ⊙ W_G (x − μ) + β`` per group of ``g`` channels.

    Training (``running`` policy), ``batch`` policy and support sets: ``μ`` is the batch mean and
    ``W = f(Σ + eps·I)`` with ``Σ = X_c X_cᵀ / m`` the group covariance of the centred batch and ``f`` the
    subclass's inverse square root (:meth:`_inv_sqrt`); gradients flow through ``μ``, ``Σ`` and ``f``. Running
    state: ``running_mean (C,)`` and ``running_wm (G, g, g)``, exponential moving averages (``momentum``, or a
    cumulative average when ``momentum=None``) of the batch ``μ`` and ``W``, initialised to 0 and ``I``. Eval mode
    applies the running pair. The covariance is computed from the centred data (not ``E[xxᵀ] − μμᵀ``) so that
    float32 cancellation cannot push small eigenvalues below the ridge.

    Subclasses set ``default_group_size`` and implement ``_inv_sqrt``; their ``_init_layer`` must call
    :meth:`_init_groups`.
    """

    state_buffers = ("running_mean", "running_wm")
    default_group_size: ClassVar[int] = 16

    def _init_groups(self, group_size: int | None, groups: int | None = None) -> None:
        name = type(self).__name__
        group_size = WM.native_grouping(self.num_features, groups, group_size, native="group_size", layer=name)
        self.group_size = WM.resolve_group_size(
            self.num_features, group_size, self.default_group_size, layer=type(self).__name__
        )
        self.groups = self.num_features // self.group_size

    def _inv_sqrt(self, sigma: Tensor) -> Tensor:
        """``(G, g, g)`` whitening matrices of the ridged covariances ``sigma (G, g, g)``."""
        raise NotImplementedError(f"{type(self).__name__} must implement _inv_sqrt(sigma)")

    # ----------------------------------------------------------------- state
    def _make_state(self, factory_kwargs: dict[str, Any]) -> dict[str, Tensor]:
        eye = torch.eye(self.group_size, **factory_kwargs)
        return {
            "running_mean": torch.zeros(self.num_features, **factory_kwargs),
            "running_wm": eye.expand(self.groups, -1, -1).clone(),
        }

    def _load_running_moments(self, mean: Tensor, var: Tensor) -> None:
        """Seed from BN: ``running_wm = diag(1/sqrt(var + eps))``, so eval mode reproduces that BN exactly."""
        self.running_mean.copy_(mean)
        rstd = torch.rsqrt(var + self.eps).reshape(self.groups, self.group_size)
        self.running_wm.copy_(torch.diag_embed(rstd))

    # ----------------------------------------------------------------- math hooks
    def _batch_stats(self, x: Tensor) -> WhiteningStats:
        mean = x.mean(dim=FN.reduce_dims(x))
        centred = x - FN.per_channel(mean, x)
        cov = WM.group_second_moment(centred, self.group_size)
        return WhiteningStats(count_of(x), mean, cov, self._inv_sqrt(WM.add_ridge(cov, self.eps)))

    def _running_stats(self, state: dict[str, Tensor]) -> WhiteningStats:
        zero = state["num_batches_tracked"].new_zeros((), dtype=torch.float64)
        return WhiteningStats(zero, state["running_mean"], None, state["running_wm"])

    def _merge_stats(self, parts: list[WhiteningStats]) -> WhiteningStats:
        """Merge the covariances (Chan's rule), then whiten the merged one."""
        count, mean, cov = merge_covariances([(p.count, p.mean, p.cov) for p in parts], self.group_size)
        return WhiteningStats(count, mean, cov, self._inv_sqrt(WM.add_ridge(cov, self.eps)))

    def _next_state(self, state: dict[str, Tensor], stats: WhiteningStats, factor: float | Tensor) -> dict[str, Tensor]:
        return {
            "running_mean": FN.ema(state["running_mean"], stats.mean, factor),
            "running_wm": FN.ema(state["running_wm"], stats.matrix, factor),
        }

    def _apply_stats(
        self, x: Tensor, stats: WhiteningStats, state: dict[str, Tensor], params: dict[str, Tensor]
    ) -> Tensor:
        """``weight ⊙ W (x − μ) + bias`` as one grouped 1×1 product with a folded bias."""
        weight, bias = params["weight"], params["bias"]
        matrix = stats.matrix
        if weight is not None:
            matrix = matrix * weight.reshape(self.groups, self.group_size, 1)
        shift = -(matrix @ stats.mean.reshape(self.groups, self.group_size, 1)).reshape(-1)
        if bias is not None:
            shift = shift + bias
        return WM.apply_group_matrix(x, matrix, shift)


@NORM_LAYERS.register("dbn")
class DBN(BatchWhitening):
    """Decorrelated Batch Normalization: exact ZCA whitening of each channel group.

    Huang, Yang, Lang, Deng, "Decorrelated Batch Normalization", CVPR 2018, arXiv 1804.08450.
    ``W = (Σ + eps·I)^{-1/2} = U Λ^{-1/2} Uᵀ`` from ``torch.linalg.eigh`` of the group covariance of the centred
    batch; ZCA rather than PCA because PCA whitening's rotation changes from batch to batch ("stochastic axis
    swapping"). The running mean and running whitening matrix (EMA, ``momentum`` 0.1) are used in eval mode
    (see :class:`BatchWhitening`).

    Gradient safeguard: ``eigh``'s backward divides by eigenvalue gaps ``λ_i − λ_j`` and is non-finite when two
    eigenvalues coincide, which dead (constant) channels and 1-shot supports produce (each dead channel
    contributes the eigenvalue ``eps``). :func:`~fewshot.norms.whitening_math.zca_inv_sqrt` therefore has its
    own backward, the exact Daleckii-Krein derivative with the divided differences of ``λ^{-1/2}`` written in
    closed form (``−1/(s_i s_j (s_i + s_j))``, ``s = sqrt(λ)``), which is finite for repeated eigenvalues.
    Eigenvalues are clamped at ``eps`` against rounding. Second derivatives (second-order MAML) go through
    ``eigh``'s autograd: exact on generic inputs, not defined on exactly repeated eigenvalues; prefer
    IterNorm or SWBN there.

    Args:
        num_features, eps, momentum, affine, track_running_stats, policy, device, dtype: see
            :class:`~fewshot.norms.base.NormLayer` (``eps`` is the ridge added to ``Σ``).
        group_size: channels per group ``g`` (default 16, the group size of the paper's CNN experiments and of
            the PyTorch ports; larger than ``num_features`` → one group; see
            :func:`~fewshot.norms.whitening_math.resolve_group_size`).

    Shape:
        input ``(N, C)`` or ``(N, C, H, W)``; output the same. Buffers ``running_mean (C,)``,
        ``running_wm (G, g, g)``.

    Example:
        >>> layer = DBN(32, group_size=8)
        >>> layer(torch.randn(20, 32)).shape
        torch.Size([20, 32])
    """

    hparams = ("group_size", "groups")
    default_group_size = 16

    def _init_layer(
        self, factory_kwargs: dict[str, Any], *, group_size: int | None = None, groups: int | None = None
    ) -> None:
        self._init_groups(group_size, groups)

    def _inv_sqrt(self, sigma: Tensor) -> Tensor:
        """ZCA of each group; a group whose covariance holds a NaN or infinity gets the identity instead.

        ``eigh`` cannot decompose a non-finite matrix (it raises or returns garbage), so such a group is
        whitened by ``I`` (its output is non-finite anyway through the mean) and its statistics, non-finite,
        make :meth:`~fewshot.norms.base.NormLayer.commit` skip the state update and warn, as for every
        stateful layer. Written with ``torch.where`` (no branch on values), so it stays legal under ``vmap``.
        """
        eye = torch.eye(self.group_size, dtype=sigma.dtype, device=sigma.device)
        finite = torch.isfinite(sigma).all(dim=-1, keepdim=True).all(dim=-2, keepdim=True)
        return torch.where(finite, WM.zca_inv_sqrt(torch.where(finite, sigma, eye), self.eps), eye)
