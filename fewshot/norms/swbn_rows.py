"""SWBN's fused training forward on the compiled row kernel: standardize and whiten in one pass, short backward.

The same function and the same closed-form backward as :class:`fewshot.norms.swbn_kernel.StandardizeThenGroupMatrix`
(Zhang et al., "Stochastic Whitening Batch Normalization", CVPR 2021, arXiv 2106.04413; derivation there), run by
the C kernel ``fewshot/norms/native/swbn_rows.c`` on the rows of a channels_last (or 2-D) CPU tensor, where each
position's ``C`` channels are contiguous. The standardized ``x̂ = (x − μ) ⊙ r`` is recomputed in every pass and
never stored, and each ``g × g`` group product runs in registers, so per training step SWBN reads and writes the
activation as often as torch's batch norm does (docs/performance.md):

* :func:`batch_moments`: ``μ``, then the biased ``σ²`` and, when the state update needs it,
  ``R_B = (1/m) Σ_j x̂_j x̂_jᵀ`` per group from the centred covariance (two passes, sums in float64);
* :func:`standardize_whiten_rows`: ``y = diag(γ) W x̂ + β`` in one pass over ``x``; backward: the cross moment
  ``Σ g_y x̂ᵀ`` with ``Σ g_y`` in one pass, then ``dx`` in one pass.

The kernel is used where :func:`rows_kernel_usable` holds (CPU, float32 or float64, row layout, library built);
SWBN falls back to :mod:`~fewshot.norms.swbn_kernel` elsewhere. A second derivative in plain autograd recomputes
the forward with differentiable ops, as there.
"""

from __future__ import annotations

import ctypes

import torch
from torch import Tensor

from fewshot.norms import native
from fewshot.norms.kernels import plain_tensor
from fewshot.norms.swbn_kernel import _differentiable_backward, _group_matrix, backward_means

__all__ = ["StandardizeWhitenRows", "batch_moments", "rows_kernel_usable", "standardize_whiten_rows"]

_DTYPE_CODE = {torch.float32: 0, torch.float64: 1}
_P = ctypes.c_void_p
_L = ctypes.c_int64
_I = ctypes.c_int
_SIGNATURES = {
    "swbn_rows_channel_sums": [_I, _P, _L, _L, _P, _P, _I],
    "swbn_rows_apply": [_I, _P, _P, _L, _L, _L, _P, _P, _P, _P, _I],
    "swbn_rows_gram": [_I, _P, _L, _L, _L, _P, _P, _P, _I],
    "swbn_rows_cross": [_I, _P, _P, _L, _L, _L, _P, _P, _P, _I],
    "swbn_rows_dx": [_I, _P, _P, _P, _L, _L, _L, _P, _P, _P, _P, _I],
}
_library: ctypes.CDLL | None = None
_library_tried = False


def _lib() -> ctypes.CDLL | None:
    """The compiled ``swbn_rows`` library with its signatures set, or ``None`` (:func:`fewshot.norms.native.load`)."""
    global _library, _library_tried
    if not _library_tried:
        lib = native.load("swbn_rows")
        if lib is not None:
            for name, argtypes in _SIGNATURES.items():
                fn = getattr(lib, name)
                fn.argtypes = argtypes
                fn.restype = ctypes.c_int
        _library, _library_tried = lib, True
    return _library


def _is_rows(x: Tensor) -> bool:
    """True when each position's channels are contiguous: 2-D contiguous, or 4-D channels_last contiguous."""
    if x.dim() == 2:
        return x.is_contiguous()
    return x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last)


def rows_kernel_usable(x: Tensor, group_size: int) -> bool:
    """Whether the compiled kernel can run SWBN's training forward on ``x`` ``(N, C[, H, W])``.

    CPU, float32 or float64, row layout (:func:`_is_rows`), ``C`` divisible by ``group_size``, and the library
    available (native kernels enabled and built). The caller has checked that a fused kernel is allowed at all
    (:func:`fewshot.norms.kernels.fused_kernels_allowed`).
    """
    return (
        x.device.type == "cpu"
        and x.dtype in _DTYPE_CODE
        and _is_rows(x)
        and x.shape[1] % group_size == 0
        and native.enabled()
        and _lib() is not None
    )


def _call(name: str, *args: object) -> None:
    """Run kernel ``name``; tensors are passed as data pointers of the tensors under any functorch wrapper (inside
    a transform even fresh tensors come wrapped, and only the innermost one has storage). The callers have checked
    shapes, dtypes and layouts (:func:`_check_rows`, :func:`_check_vector`); the kernel checks the group shape."""
    # ``args`` keeps every tensor alive until the kernel returns (a temporary's memory must not be reused).
    pointers = tuple(plain_tensor(a).data_ptr() if isinstance(a, Tensor) else a for a in args)
    status = getattr(_lib(), name)(*pointers)
    if status == 2:
        raise ValueError(f"{name}: the channels are not whole groups of the group size (a bug in the caller)")
    if status != 0:
        raise MemoryError(f"{name}: the compiled SWBN kernel could not allocate its per-thread buffers")


def _check_rows(x: Tensor, group_size: int, what: str = "x", like: Tensor | None = None) -> None:
    """``x`` ``(N, C[, H, W])`` is float32/float64 in row layout with whole groups (and, with ``like``, its twin).

    Raises:
        ValueError: naming what was expected and what came (the kernel would read it out of bounds otherwise).
    """
    plain = plain_tensor(x)
    if x.dtype not in _DTYPE_CODE or not _is_rows(plain) or x.dim() < 2 or x.shape[1] % group_size != 0:
        raise ValueError(
            f"swbn_rows: {what} must be a float32/float64 (N, C) or channels_last (N, C, H, W) tensor with C a "
            f"multiple of the group size {group_size}; got {x.dtype} shape {tuple(x.shape)} strides {plain.stride()}"
        )
    if like is not None and (x.shape != like.shape or x.dtype != like.dtype):
        raise ValueError(
            f"swbn_rows: {what} must match x ({like.dtype} {tuple(like.shape)}), got {x.dtype} {tuple(x.shape)}"
        )


def _check_vector(t: Tensor, x: Tensor, what: str) -> None:
    """``t`` is a dense ``(C,)`` tensor of ``x``'s dtype."""
    if t.shape != (x.shape[1],) or t.dtype != x.dtype or not plain_tensor(t).is_contiguous():
        raise ValueError(
            f"swbn_rows: {what} must be a contiguous ({x.shape[1]},) {x.dtype} tensor, got {t.dtype} {tuple(t.shape)}"
        )


def _shape(x: Tensor, group_size: int) -> tuple[int, int, int, int]:
    """(dtype code, m rows, C channels, g) of ``x`` for the kernel."""
    c = x.shape[1]
    return _DTYPE_CODE[x.dtype], x.numel() // c, c, group_size


def batch_moments(
    x: Tensor, group_size: int, eps: float, with_corr: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """Batch statistics of ``x`` for SWBN's fused forward, without autograd, in two passes over ``x``.

    The mean from per-channel sums, then the centred group covariance (or, without ``R_B``, the per-channel sum
    of squares), all summed in float64 over fixed ranges of rows, so the statistics are the same bits on any
    number of threads (the kernel's other sums too): a distributed rank and a single process agree exactly.

    Args:
        x: ``(N, C[, H, W])`` in row layout (:func:`rows_kernel_usable`).
        group_size: ``g``.
        eps: the variance floor of ``invstd``.
        with_corr: also compute ``R_B`` (the state update reads it).

    Returns:
        ``mean (C,)``, biased ``var (C,)``, ``invstd = 1/sqrt(var + eps) (C,)`` in ``x``'s dtype, and ``R_B``
        ``(G, g, g)`` (the group second moment of ``x̂``, summed in float64) or ``None``.
    """
    _check_rows(x, group_size)
    code, m, c, g = _shape(x, group_size)
    threads = torch.get_num_threads()
    with torch.no_grad():
        sums = torch.empty(c, dtype=torch.float64)
        _call("swbn_rows_channel_sums", code, x, m, c, None, sums, threads)
        mean = (sums / m).to(x.dtype)  # x̂ is formed with this rounded mean in every pass
        if with_corr:
            gram = torch.empty(c // g, g, g, dtype=torch.float64)
            _call("swbn_rows_gram", code, x, m, c, g, mean, torch.ones_like(mean), gram, threads)
            cov = gram / m  # the centred covariance per group
            var64 = cov.diagonal(dim1=-2, dim2=-1).reshape(c)
            rstd = torch.rsqrt(var64 + eps).reshape(c // g, g)
            corr = (cov * rstd[:, :, None] * rstd[:, None, :]).to(x.dtype)
        else:
            squares = torch.empty(c, dtype=torch.float64)
            _call("swbn_rows_channel_sums", code, x, m, c, mean, squares, threads)
            var64, corr = squares / m, None
        return mean, var64.to(x.dtype), torch.rsqrt(var64 + eps).to(x.dtype), corr


class StandardizeWhitenRows(torch.autograd.Function):
    """``y = diag(γ) W (x − μ) ⊙ r + β`` by the compiled row kernel, with the closed-form backward.

    Inputs: ``x`` ``(N, C[, H, W])`` in row layout; ``mean``, ``invstd`` ``(C,)`` its batch statistics from
    :func:`batch_moments` (no gradient: the backward's formula accounts for their dependence on ``x``); ``w``
    ``(G, g, g)`` the whitening matrix (held fixed: no gradient); ``weight``, ``bias`` ``(C,)`` or ``None``;
    ``eps`` the variance floor used for ``invstd``.
    """

    @staticmethod
    def forward(
        x: Tensor, mean: Tensor, invstd: Tensor, w: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
    ) -> Tensor:
        groups, g, _ = w.shape
        _check_rows(x, g)
        if w.shape != (x.shape[1] // g, g, g):
            raise ValueError(f"swbn_rows: W must be ({x.shape[1] // g}, {g}, {g}) for {x.shape[1]} channels, got "
                             f"{tuple(w.shape)}")  # fmt: skip
        _check_vector(mean, x, "mean")
        _check_vector(invstd, x, "invstd")
        code, m, c, _ = _shape(x, g)
        at = _group_matrix(w, weight).mT.to(x.dtype).contiguous()  # at[b][c] = A[c][b]: rows of the inner loop
        shift = (bias if bias is not None else x.new_zeros(c)).to(x.dtype).contiguous()
        y = torch.empty_like(x)  # keeps channels_last
        _call("swbn_rows_apply", code, x, y, m, c, g, mean, invstd, at, shift, torch.get_num_threads())
        return y

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - autograd signature
        x, mean, invstd, w, weight, bias, eps = inputs
        ctx.save_for_backward(x, mean, invstd, w, weight, bias)
        ctx.eps = eps

    @staticmethod
    def backward(ctx, grad_y: Tensor):  # noqa: ANN001, ANN205 - autograd signature
        x, mean, invstd, w, weight, bias = ctx.saved_tensors
        if torch.is_grad_enabled() and not torch._C._are_functorch_transforms_active():
            return _differentiable_backward(ctx, grad_y, x, w, weight, bias)
        # Below here only a first-order backward runs (inside torch.func.grad only where nothing differentiates the
        # result again, fewshot.norms.kernels), so the kernel may read the tensors under any functorch wrapper.
        groups, g, _ = w.shape
        code, m, c, _ = _shape(x, g)
        threads = torch.get_num_threads()
        grad_y = grad_y.contiguous(memory_format=torch.channels_last) if x.dim() == 4 else grad_y.contiguous()
        _check_rows(grad_y, g, "grad_y", like=x)
        sums = torch.empty(c * g + c, dtype=torch.float64)
        _call("swbn_rows_cross", code, grad_y, x, m, c, g, mean, invstd, sums, threads)
        cross = sums[: c * g].reshape(groups, g, g)  # Σ_j g_y,j x̂_jᵀ, entry [c][b]
        grad_sum = sums[c * g :]  # Σ_j g_y,j
        a = _group_matrix(w, weight).double()
        r = invstd.double()
        mean_gxhat, mean_gxhat_xhat = backward_means(a, cross, grad_sum, m)
        grad_x = None
        if ctx.needs_input_grad[0]:
            p = (a * r.reshape(groups, 1, g)).to(x.dtype).contiguous()  # p[c][b] = A[c][b] r_b
            s1 = (-r * mean_gxhat).to(x.dtype)
            s2 = (-r * r * mean_gxhat_xhat).to(x.dtype)
            grad_x = torch.empty_like(x)
            _call("swbn_rows_dx", code, grad_y, x, grad_x, m, c, g, mean, p, s1, s2, threads)
        grad_weight = None
        if weight is not None and ctx.needs_input_grad[4]:
            grad_weight = (w.double() * cross).sum(-1).reshape(c).to(weight.dtype)
        grad_bias = grad_sum.to(bias.dtype) if bias is not None and ctx.needs_input_grad[5] else None
        return grad_x, None, None, None, grad_weight, grad_bias, None


def standardize_whiten_rows(
    x: Tensor, mean: Tensor, invstd: Tensor, w: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """:class:`StandardizeWhitenRows` applied (see there for the arguments); returns ``y`` shaped like ``x``."""
    return StandardizeWhitenRows.apply(x, mean, invstd, w, weight, bias, eps)
