"""The BatchNorm family: ``batchnorm`` (PyTorch semantics, any policy) and ``batchnorm_transductive`` (TBN).

Both normalize with the *biased* batch variance and (``batchnorm``) store the *unbiased* one in
``running_var``, exactly like ``torch.nn.BatchNorm2d``. Two implementations of the same function, chosen per
forward: torch's fused kernel (``torch.native_batch_norm``) for batch-statistics forwards wherever it is exact
(:func:`fewshot.norms.kernels.fused_kernels_allowed`: plain autograd and ``torch.func.grad``, i.e. ProtoNet
training and MAML's second-order inner loop), and a composition of primitive ops otherwise (``vmap``, the
``support`` policy whose cached statistics must carry gradients, eval with running statistics), so second-order
meta-gradients are correct everywhere.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from fewshot.norms import functional as FN
from fewshot.norms import whitening_math as WM
from fewshot.norms.base import NormLayer
from fewshot.norms.functional import Moments
from fewshot.norms.kernels import fused_kernels_allowed
from fewshot.norms.registry import NORM_LAYERS

__all__ = ["BatchNorm", "TransductiveBatchNorm"]


@NORM_LAYERS.register("batchnorm")
class BatchNorm(NormLayer):
    """Batch Normalization over the channels of ``(N, C)`` or ``(N, C, H, W)`` input.

    Ioffe & Szegedy, "Batch Normalization: Accelerating Deep Network Training by Reducing Internal Covariate
    Shift", ICML 2015, arXiv 1502.03167.

    ``y = weight · (x − μ) / sqrt(σ² + eps) + bias`` per channel, with ``μ, σ²`` the mean and biased variance
    over ``(N, H, W)`` (train mode / ``batch`` policy / support set) or the running buffers (eval mode,
    ``running`` policy). The running average stores the unbiased variance ``σ²·m/(m−1)``, ``m = N·H·W``.
    With the default ``running`` policy this equals ``nn.BatchNorm1d``/``nn.BatchNorm2d`` (CBN); with
    ``policy="support"`` it is MetaBN (Bronskill et al., ICML 2020, arXiv 2003.03284): the support set's
    moments normalize support and query.

    Args: see :class:`~fewshot.norms.base.NormLayer` (no layer-specific options).

    Shape:
        input ``(N, C)`` or ``(N, C, H, W)``; output the same shape.

    Example:
        >>> layer = BatchNorm(8)
        >>> layer(torch.randn(5, 8, 4, 4)).shape
        torch.Size([5, 8, 4, 4])
    """

    state_buffers = ("running_mean", "running_var")

    def _make_state(self, factory_kwargs: dict[str, Any]) -> dict[str, Tensor]:
        return {
            "running_mean": torch.zeros(self.num_features, **factory_kwargs),
            "running_var": torch.ones(self.num_features, **factory_kwargs),
        }

    def _batch_stats(self, x: Tensor) -> Moments:
        return Moments(*WM.channel_moments(x))

    def _running_stats(self) -> Moments:
        return Moments(self.running_mean, self.running_var)

    def _normalize(self, x: Tensor, stats: Moments) -> Tensor:
        return FN.standardize(x, FN.per_channel(stats.mean, x), FN.per_channel(stats.var, x), self.eps)

    def _update_state(self, stats: Moments, x: Tensor) -> None:
        factor = self._ema_factor()
        unbiased_var = FN.unbias_variance(stats.var, FN.samples_per_channel(x))
        self.running_mean.copy_(FN.ema(self.running_mean, stats.mean, factor))
        self.running_var.copy_(FN.ema(self.running_var, unbiased_var, factor))

    def forward(self, x: Tensor) -> Tensor:
        """Normalize ``x`` (N, C) or (N, C, H, W); returns the same shape.

        Same flow as :meth:`NormLayer.forward`, with normalization and affine folded into one per-channel
        ``scale = weight / sqrt(σ² + eps)`` and ``shift = bias − μ·scale``, applied in one pass
        (``addcmul``) that keeps the memory format of ``x``. With the one-pass backward of
        :func:`~fewshot.norms.whitening_math.channel_moments` this is 2-2.5x faster than the textbook
        composition and still made of differentiable primitives (double backward and vmap stay exact).
        Batch-statistics forwards outside ``vmap`` and the ``support`` policy take torch's fused kernel
        instead (:meth:`_fused_batch_forward`, module docstring).
        """
        self._check_input_dim(x)
        if (
            self._stats_source() == "batch"
            and self.policy != "support"
            and fused_kernels_allowed(x, self.weight, self.bias)
        ):
            return self._fused_batch_forward(x)
        stats = self._select_stats(x)
        scale = torch.rsqrt(stats.var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight
        shift = -stats.mean * scale
        if self.bias is not None:
            shift = shift + self.bias
        return torch.addcmul(FN.per_channel(shift, x), x, FN.per_channel(scale, x))

    def _fused_batch_forward(self, x: Tensor) -> Tensor:
        """Batch-statistics forward with torch's fused kernel; the state update stays :meth:`_update_state`'s.

        The kernel returns the batch mean and ``1/sqrt(σ² + eps)`` (no gradient: nothing caches them, the
        ``support`` policy takes the exact path); ``σ²`` is recovered in float64 for the running-state update.
        """
        self._check_batch_size(x)  # our message, before the kernel raises its own
        y, mean, invstd = torch.native_batch_norm(x, self.weight, self.bias, None, None, True, 0.0, self.eps)
        var = (invstd.double().pow(-2) - self.eps).clamp_min(0).to(invstd.dtype)
        self._select_stats(x, Moments(mean, var))
        return y


@NORM_LAYERS.register("batchnorm_transductive")
class TransductiveBatchNorm(BatchNorm):
    """Transductive Batch Normalization (TBN): always the current batch's statistics, in train and eval mode.

    The normalization used by the reference MAML implementation ("TBN" in Bronskill et al., "TaskNorm:
    Rethinking Batch Normalization for Meta-Learning", ICML 2020, arXiv 2003.03284), i.e.
    ``nn.BatchNorm2d(track_running_stats=False)``. Predictions for one query depend on the other queries of
    the batch: label results obtained with it as transductive.

    The policy is fixed to ``"batch"`` (constructing it with another policy raises; ``set_policy`` leaves it
    alone) and it keeps no running state (``track_running_stats`` is always False, momentum is unused).

    Args: see :class:`~fewshot.norms.base.NormLayer` (no layer-specific options).

    Shape:
        input ``(N, C)`` or ``(N, C, H, W)`` with ``N ≥ 2``; output the same shape.

    Example:
        >>> layer = TransductiveBatchNorm(8).eval()
        >>> y = layer(torch.randn(5, 8))
        >>> bool(y.mean(0).abs().max() < 1e-5)
        True
    """

    state_buffers = ()
    fixed_policy = "batch"
    reproduces_bn_after_convert = False
