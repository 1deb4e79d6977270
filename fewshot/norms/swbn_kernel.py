"""SWBN's fused training forward: the standardization folded into the group matrix, with a short backward.

The function (Zhang et al., "Stochastic Whitening Batch Normalization", CVPR 2021, arXiv 2106.04413; the
layer is :class:`fewshot.norms.swbn.SWBN`), per group of ``g`` channels, ``m = N·H·W`` rows:

    x̂ = (x − μ) ⊙ r,   r = 1/sqrt(σ² + eps)  (batch mean and biased variance, as BN)
    z = W x̂,  y = γ ⊙ z + β                   (W fixed: no gradient, the paper's "W is held fixed in the backward")

Folded, ``z = W diag(r) x − W diag(r) μ``: one grouped product with a bias, so ``x̂`` is never materialized,
then ``y`` is one ``addcmul``. The statistics come from torch's batch-norm statistics kernel
(:func:`batch_statistics`, which writes no output), and ``R_B`` for the ``W`` update from the second moment of
``x`` itself.

Autograd through that composition would record the statistics' backward, a grouped convolution (input and
weight gradient) and the affine. :class:`FoldedGroupWhitening` has the closed form instead, with
``gŷ = Aᵀ g_y``, ``A = diag(γ) W``:

    dβ = Σ_j g_y,j,   dγ = Σ_j g_y,j ⊙ z_j       (one pass: torch's batch-norm backward reduction of g_y on z)
    dx = r ⊙ (gŷ − mean(gŷ) − x̂ ⊙ mean(gŷ ⊙ x̂))   (torch's batch-norm input gradient of gŷ at μ, r)

so the backward is the reduction pass, one group-matrix product (``gŷ``) and the two passes of BN's backward,
and ``z`` is saved for it. The same formula is the chain rule through batch norm and the product (tests compare
gradients with the primitive-op path).

Rounding: ``R_B`` is taken from the second moment of the uncentred ``x`` less ``μ μᵀ``, which in float32 loses
about ``log10(1 + μ²/σ²)`` digits where a channel's mean is large against its spread; ``R_B`` only feeds the
``W`` update, its diagonal is set from the kernel's two-pass variance, and the normalization and all gradients
use the kernel's moments directly.

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

__all__ = ["FoldedGroupWhitening", "batch_statistics", "folded_group_whitening"]


def batch_statistics(x: Tensor, group_size: int, eps: float, with_corr: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """Batch mean, biased variance and (optionally) ``R_B`` of ``x`` without writing a standardized copy.

    The moments come from torch's batch-norm statistics kernel (``torch.batch_norm_update_stats``, the one
    ``native_batch_norm`` uses, without its output pass). ``R_B = diag(r) (Σ_j x_j x_jᵀ / m − μ μᵀ) diag(r)``
    per group, ``r = 1/sqrt(σ² + eps)``, with its diagonal ``σ² r²`` from the kernel's variance.
    Runs without autograd (nothing here gets a gradient).

    Args:
        x: ``(N, C)`` or ``(N, C, H, W)``, any memory format.
        group_size: channels per group ``g`` (divides ``C``).
        eps: the variance floor of ``r``.
        with_corr: compute ``R_B`` (one product over ``x``); otherwise ``None`` is returned in its place.

    Returns:
        ``(mean (C,), var (C,), corr (G, g, g) or None)``.
    """
    with torch.no_grad():
        mean, var = torch.batch_norm_update_stats(x, None, None, 0.0)
        if not with_corr:
            return mean, var, None
        groups = x.shape[1] // group_size
        mu = mean.reshape(groups, group_size)
        cov = WM.group_second_moment(x, group_size) - mu[:, :, None] * mu[:, None, :]
        cov.diagonal(dim1=-2, dim2=-1).copy_(var.reshape(groups, group_size))
        return mean, var, WM.correlation(cov, torch.rsqrt(var + eps))


def _group_matrix(w: Tensor, weight: Tensor | None) -> Tensor:
    """``A = diag(γ) W`` per group ``(G, g, g)``; ``W`` itself when there is no affine weight."""
    return w if weight is None else w * weight.reshape(w.shape[0], w.shape[1], 1)


class FoldedGroupWhitening(torch.autograd.Function):
    """``y = diag(γ) W diag(r) (x − μ) + β`` as one grouped product, with the closed-form backward (module docstring).

    Inputs: ``x`` (N, C[, H, W]); ``mean`` and ``invstd`` ``(C,)`` its batch mean and ``r = 1/sqrt(σ² + eps)``,
    computed without autograd (:func:`batch_statistics`; the backward differentiates through them); ``w``
    ``(G, g, g)`` the whitening matrix (no gradient); ``weight``, ``bias`` ``(C,)`` or ``None``; ``eps`` the
    variance floor used for ``invstd``.

    Outputs ``(y, z)``: ``z = W x̂`` (before the affine) is returned only so that the backward can save it (a
    custom function under ``torch.func`` saves outputs, not intermediates); it is non-differentiable, and
    empty without an affine weight (then ``y = z + β`` is the one product).
    """

    @staticmethod
    def forward(
        x: Tensor, mean: Tensor, invstd: Tensor, w: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> tuple[Tensor, Tensor]:
        groups, g, _ = w.shape
        matrix = w * invstd.reshape(groups, 1, g)  # W diag(r)
        shift = -(matrix @ mean.reshape(groups, g, 1)).reshape(-1)
        if weight is None:
            return WM.apply_group_matrix(x, matrix, shift if bias is None else shift + bias), x.new_empty(0)
        z = WM.apply_group_matrix(x, matrix, shift)
        y = (
            z * FN.per_channel(weight, z)
            if bias is None
            else torch.addcmul(FN.per_channel(bias, z), z, FN.per_channel(weight, z))
        )
        return y, z

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - autograd signature
        x, mean, invstd, w, weight, bias, eps = inputs
        ctx.mark_non_differentiable(output[1])
        ctx.save_for_backward(x, output[1], mean, invstd, w, weight, bias)
        ctx.eps = eps

    @staticmethod
    def backward(ctx, grad_y: Tensor, _: Tensor | None):  # noqa: ANN001, ANN205 - autograd signature
        x, z, mean, invstd, w, weight, bias = ctx.saved_tensors
        if torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active():
            return _differentiable_backward(ctx, grad_y, x, w, weight, bias)
        want_weight = weight is not None and ctx.needs_input_grad[4]
        want_bias = bias is not None and ctx.needs_input_grad[5]
        grad_weight = grad_bias = None
        if want_weight:  # one pass of torch's batch-norm backward reduction: (Σ g_y ⊙ (z − 0)·1, Σ g_y)
            ones = torch.ones_like(invstd)
            _, grad_weight, grad_bias = torch.ops.aten.native_batch_norm_backward(
                grad_y, z, None, None, None, torch.zeros_like(mean), ones, True, 0.0, [False, True, want_bias]
            )
        elif want_bias:
            grad_bias = grad_y.sum(dim=(0, *range(2, grad_y.dim())))
        grad_x = None
        if ctx.needs_input_grad[0]:  # BN's input gradient of gŷ = Aᵀ g_y at the batch statistics
            grad_xhat = WM.apply_group_matrix(grad_y, _group_matrix(w, weight).mT)
            grad_x = torch.ops.aten.native_batch_norm_backward(
                grad_xhat, x, None, None, None, mean, invstd, True, ctx.eps, [True, False, False]
            )[0]
        return grad_x, None, None, None, grad_weight, grad_bias, None


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


def folded_group_whitening(
    x: Tensor, mean: Tensor, invstd: Tensor, w: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """:class:`FoldedGroupWhitening` applied (see there for the arguments); returns ``y`` shaped like ``x``."""
    return FoldedGroupWhitening.apply(x, mean, invstd, w, weight, bias, eps)[0]
