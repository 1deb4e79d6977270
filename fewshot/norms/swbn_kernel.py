"""SWBN's fused training forward: torch's batch-norm kernel, then the group matrix, with a short backward.

The function (Zhang et al., "Stochastic Whitening Batch Normalization", CVPR 2021, arXiv 2106.04413; the
layer is :class:`fewshot.norms.swbn.SWBN`), per group of ``g`` channels, ``m = N·H·W`` rows:

    x̂ = (x − μ) ⊙ r,   r = 1/sqrt(σ² + eps)  (batch mean and biased variance, as BN)
    y = A x̂ + β,        A = diag(γ) W        (W fixed: no gradient, the paper's "W is held fixed in the backward")

Autograd would record three nodes (batch norm, grouped 1×1 product, the bias) and run a grouped-convolution
backward for the input and for the weight of the 1×1 product, then the batch-norm backward: five passes over
the activation plus the slow grouped 1×1 weight gradient. :class:`StandardizeThenGroupMatrix` has the closed
form instead. With ``gŷ = Aᵀ g_y`` and the per-group cross moment ``M = Σ_j g_y,j x̂_jᵀ`` (one batched product
over strided views, :func:`~fewshot.norms.whitening_math.group_second_moment`):

    dβ = Σ_j g_y,j
    dγ_c = Σ_b W_cb M_cb                            (= Σ_j g_y,c (W x̂_j)_c)
    dx = r ⊙ (Aᵀ g_y − mean(gŷ) − x̂ ⊙ mean(gŷ ⊙ x̂)),  mean(gŷ) = Aᵀ dβ / m,  mean(gŷ ⊙ x̂)_c = (Aᵀ M)_cc / m

so ``dx`` is one group-matrix product of ``g_y`` with ``diag(r) Aᵀ`` and one ``addcmul`` with ``x̂``: three
passes (cross moment, product, addcmul) plus a sum. The same formula is torch's batch-norm backward composed
with the product's (tests compare gradients with the primitive-op path).

The backward is exact to first order. For a second derivative in plain autograd (``create_graph=True``,
gradgradcheck) it recomputes the forward with differentiable ops (``F.batch_norm`` and
:func:`~fewshot.norms.whitening_math.apply_group_matrix`) and differentiates that, so higher derivatives stay
exact. Inside ``torch.func.grad`` the layer only takes this path when nothing differentiates the result again
(:func:`fewshot.norms.kernels.fused_kernels_allowed`), so the short backward is used there too.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from fewshot.norms import functional as FN
from fewshot.norms import whitening_math as WM

__all__ = ["StandardizeThenGroupMatrix", "backward_means", "standardize_then_group_matrix"]


def _group_matrix(w: Tensor, weight: Tensor | None) -> Tensor:
    """``A = diag(γ) W`` per group ``(G, g, g)``; ``W`` itself when there is no affine weight."""
    return w if weight is None else w * weight.reshape(w.shape[0], w.shape[1], 1)


class StandardizeThenGroupMatrix(torch.autograd.Function):
    """``y = diag(γ) W x̂ + β`` from a precomputed ``x̂ = BN(x)``, with the closed-form backward (module docstring).

    Inputs: ``x`` (N, C[, H, W]) only links the graph (and feeds the double-backward recomputation);
    ``x_hat`` the batch-standardized ``x`` and ``invstd`` ``(C,)`` its ``1/sqrt(σ² + eps)``, both computed without
    autograd from ``x``; ``w`` ``(G, g, g)`` the whitening matrix (no gradient); ``weight``, ``bias`` ``(C,)`` or
    ``None``; ``eps`` the variance floor used for ``invstd``.
    """

    @staticmethod
    def forward(
        x: Tensor, x_hat: Tensor, invstd: Tensor, w: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> Tensor:
        # A custom Function's output that is a view may not be modified in place, and callers do that (Conv-4's
        # ReLU): the NCHW product is written straight into an owned tensor, other products are copied if a view.
        a = _group_matrix(w, weight)
        if x_hat.dim() == 4 and x_hat.is_contiguous():
            n, _, h, w_ = x_hat.shape
            groups, g, _ = a.shape
            y = torch.empty_like(x_hat, memory_format=torch.contiguous_format)
            rows = y.view(n, groups, g, h * w_)
            torch.matmul(a, x_hat.view(n, groups, g, h * w_), out=rows)
            if bias is not None:
                rows.add_(bias.reshape(groups, g, 1))
            return y
        y = WM.apply_group_matrix(x_hat, a, bias)
        return y if y._base is None else y.clone()

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - autograd signature
        x, x_hat, invstd, w, weight, bias, eps = inputs
        ctx.save_for_backward(x, x_hat, invstd, w, weight, bias)
        ctx.eps = eps

    @staticmethod
    def backward(ctx, grad_y: Tensor):  # noqa: ANN001, ANN205 - autograd signature
        x, x_hat, invstd, w, weight, bias = ctx.saved_tensors
        if torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active():
            return _differentiable_backward(ctx, grad_y, x, w, weight, bias)
        groups, g, _ = w.shape
        c = groups * g
        m = x_hat.numel() // c
        dims = (0, *range(2, x_hat.dim()))
        a = _group_matrix(w, weight)
        grad_sum = grad_y.sum(dim=dims)  # (C,)
        grad_y = grad_y.contiguous(memory_format=_memory_format(x_hat))  # same row layout for the cross moment
        cross = WM.group_second_moment(grad_y, g, x_hat) * m  # (G, g, g): Σ g_y x̂ᵀ
        mean_gxhat, mean_gxhat_xhat = backward_means(a, cross, grad_sum, m)
        grad_x = None
        if ctx.needs_input_grad[0]:
            back = a.mT * invstd.reshape(groups, g, 1)  # diag(r) Aᵀ
            grad_x = WM.apply_group_matrix(grad_y, back, -invstd * mean_gxhat)
            grad_x.addcmul_(x_hat, FN.per_channel(-invstd * mean_gxhat_xhat, x_hat))
        grad_weight = (w * cross).sum(-1).reshape(c) if weight is not None and ctx.needs_input_grad[4] else None
        grad_bias = grad_sum if bias is not None and ctx.needs_input_grad[5] else None
        return grad_x, None, None, None, grad_weight, grad_bias, None


def backward_means(a: Tensor, cross: Tensor, grad_sum: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """The closed form's two per-channel means: ``mean(gŷ) = Aᵀ Σg_y / m`` and ``mean(gŷ ⊙ x̂) = diag(Aᵀ M) / m``.

    ``a`` ``(G, g, g)`` is ``diag(γ) W``, ``cross`` ``(G, g, g)`` the cross moment ``M = Σ_j g_y,j x̂_jᵀ`` (entry
    ``[c][b]``), ``grad_sum`` ``(C,)`` ``Σ_j g_y,j``, ``m`` the rows. Returns both ``(C,)`` in their dtype.
    """
    groups, g, _ = a.shape
    mean_gxhat = (a.mT @ grad_sum.reshape(groups, g, 1)).reshape(-1) / m
    mean_gxhat_xhat = (a.mT @ cross).diagonal(dim1=-2, dim2=-1).reshape(-1) / m
    return mean_gxhat, mean_gxhat_xhat


def _memory_format(x: Tensor) -> torch.memory_format:
    """channels_last when ``x`` is a 4-D channels_last tensor, else the contiguous format."""
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _differentiable_backward(ctx, grad_y: Tensor, x: Tensor, w: Tensor, weight: Tensor | None, bias: Tensor | None):  # noqa: ANN001, ANN202
    """The backward by autograd through a differentiable recomputation, so that its own derivative is exact."""
    inputs = [t for t, need in ((x, ctx.needs_input_grad[0]), (weight, ctx.needs_input_grad[4]),
                                (bias, ctx.needs_input_grad[5])) if need and t is not None]  # fmt: skip
    x_hat = F.batch_norm(x, None, None, training=True, eps=ctx.eps)
    y = WM.apply_group_matrix(x_hat, _group_matrix(w, weight), bias)
    grads = iter(torch.autograd.grad(y, inputs, grad_y, create_graph=True))
    grad_x = next(grads) if ctx.needs_input_grad[0] else None
    grad_weight = next(grads) if weight is not None and ctx.needs_input_grad[4] else None
    grad_bias = next(grads) if bias is not None and ctx.needs_input_grad[5] else None
    return grad_x, None, None, None, grad_weight, grad_bias, None


def standardize_then_group_matrix(
    x: Tensor, x_hat: Tensor, invstd: Tensor, w: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """:class:`StandardizeThenGroupMatrix` applied (see there for the arguments); returns ``y`` shaped like ``x``."""
    return StandardizeThenGroupMatrix.apply(x, x_hat, invstd, w, weight, bias, eps)
