"""The BatchNorm family: ``batchnorm`` (PyTorch semantics, any policy) and ``batchnorm_transductive`` (TBN).

Both normalize with the *biased* batch variance and (``batchnorm``) store the *unbiased* one in
``running_var``, exactly like ``torch.nn.BatchNorm2d``. Two implementations of the same function, chosen per
forward: torch's fused kernel (``torch.native_batch_norm``) for batch-statistics forwards wherever it is exact
(:func:`fewshot.norms.kernels.fused_kernels_allowed`: plain autograd and ``torch.func.grad``, i.e. ProtoNet
training and MAML's second-order inner loop), and ``apply``'s composition of primitive ops otherwise (``vmap``,
the ``support`` policy whose statistics must carry gradients to the query, eval with running statistics), so
second-order meta-gradients are correct everywhere.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import torch
from torch import Tensor

from fewshot.norms import functional as FN
from fewshot.norms import whitening_math as WM
from fewshot.norms.base import NormLayer
from fewshot.norms.kernels import fused_kernels_allowed
from fewshot.norms.policy import Policy
from fewshot.norms.registry import NORM_LAYERS
from fewshot.norms.sufficient import count_of, merge_moments

__all__ = ["BatchMoments", "BatchNorm", "TransductiveBatchNorm"]


class BatchMoments(NamedTuple):
    """Per-channel batch statistics: ``count`` m (float64 0-dim), ``mean (C,)``, biased ``var (C,)``.

    From the state (eval, ``running`` policy) ``var`` is the stored unbiased running variance and ``count`` 0.
    """

    count: Tensor
    mean: Tensor
    var: Tensor


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

    def _batch_stats(self, x: Tensor) -> BatchMoments:
        return BatchMoments(count_of(x), *WM.channel_moments(x))

    def _running_stats(self, state: dict[str, Tensor]) -> BatchMoments:
        return BatchMoments(state["num_batches_tracked"].new_zeros((), dtype=torch.float64),
                            state["running_mean"], state["running_var"])  # fmt: skip

    def _merge_stats(self, parts: list[BatchMoments]) -> BatchMoments:
        return BatchMoments(*merge_moments(parts))

    def _next_state(self, state: dict[str, Tensor], stats: BatchMoments, factor: float | Tensor) -> dict[str, Tensor]:
        unbiased_var = FN.unbias_variance(stats.var, stats.count)
        return {
            "running_mean": FN.ema(state["running_mean"], stats.mean, factor),
            "running_var": FN.ema(state["running_var"], unbiased_var, factor),
        }

    def _apply_stats(
        self, x: Tensor, stats: BatchMoments, state: dict[str, Tensor], params: dict[str, Tensor]
    ) -> Tensor:
        """Normalization and affine folded into ``scale = weight / sqrt(σ² + eps)``, ``shift = bias − μ·scale``.

        One ``addcmul`` pass that keeps the memory format of ``x``; with the one-pass backward of
        :func:`~fewshot.norms.whitening_math.channel_moments` it stays made of differentiable primitives (double
        backward and vmap exact) at a fraction of the textbook composition's cost.
        """
        scale = torch.rsqrt(stats.var + self.eps)
        if params["weight"] is not None:
            scale = scale * params["weight"]
        shift = -stats.mean * scale
        if params["bias"] is not None:
            shift = shift + params["bias"]
        return torch.addcmul(FN.per_channel(shift, x), x, FN.per_channel(scale, x))

    def _batch_forward(self, x: Tensor, flow: Any) -> Tensor:
        """Batch statistics with torch's fused kernel where exact; the primitive composition otherwise.

        The kernel returns the batch mean and ``1/sqrt(σ² + eps)`` without gradient, so it is used only where no
        one differentiates the statistics themselves (not the ``support`` policy, whose statistics reach the query)
        and where :func:`~fewshot.norms.kernels.fused_kernels_allowed`. ``σ²`` is recovered in float64 for the
        state update.
        """
        if self.policy is Policy.SUPPORT or not fused_kernels_allowed(x, self.weight, self.bias):
            return super()._batch_forward(x, flow)
        self._check_batch_size(x)  # our message, before the kernel raises its own
        y, mean, invstd = torch.native_batch_norm(x, self.weight, self.bias, None, None, True, 0.0, self.eps)
        var = (invstd.double().pow(-2) - self.eps).clamp_min(0).to(invstd.dtype)
        self._observe(BatchMoments(count_of(x), mean, var), flow)
        return y


@NORM_LAYERS.register("batchnorm_transductive")
class TransductiveBatchNorm(BatchNorm):
    """Transductive Batch Normalization (TBN): always the current batch's statistics, in train and eval mode.

    The normalization used by the reference MAML implementation ("TBN" in Bronskill et al., "TaskNorm:
    Rethinking Batch Normalization for Meta-Learning", ICML 2020, arXiv 2003.03284), i.e.
    ``nn.BatchNorm2d(track_running_stats=False)``. Predictions for one query depend on the other queries of
    the batch: label results obtained with it as transductive.

    The policy is fixed to ``"transductive"`` (constructing it with another policy raises; ``set_policy`` leaves it
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
    fixed_policy = Policy.TRANSDUCTIVE
    reproduces_bn_after_convert = False
