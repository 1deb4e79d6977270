"""Pure whitening math shared by the whitening layers (SWBN, IterNorm, DBN, Group Whitening).

Everything here is a pure function of tensors (no ``nn.Module``, no argument is mutated), is written from
primitive differentiable ops (``mean``, ``matmul``, grouped 1×1 ``conv2d``, ``eigh``) and is vmap-legal: no
``.item()``, no Python branch on tensor values, group counts and iteration counts are plain Python ints.

Shapes and names: ``x`` is ``(N, C)`` or ``(N, C, H, W)``; ``m = N·H·W``; channels are split into ``G`` groups
of ``g`` consecutive channels (``g`` = ``group_size``, ``C = G·g``); per-group matrices are ``(G, g, g)``.

Cost: the products over the ``m`` rows dominate and the ``g × g`` algebra is negligible (timings in
``docs/performance.md``, from ``bench norms``). So every per-group product over ``m`` is one batched
call: the Gram matrices are one batched matmul over strided views (no copy for NCHW or channels_last input)
and applying the matrices is one grouped 1×1 convolution, which keeps the memory format of ``x``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor
from torch._C._functorch import is_batchedtensor

__all__ = [
    "add_ridge",
    "apply_group_matrix",
    "block_diagonal",
    "channel_moments",
    "channel_moments_and_covariance",
    "correlation",
    "group_second_moment",
    "newton_schulz_inv_sqrt",
    "newton_schulz_scalar",
    "per_sample_group_covariance",
    "resolve_group_size",
    "swbn_delta",
    "swbn_step",
    "symmetrize",
    "whiteness_error",
    "zca_inv_sqrt",
]

SWBN_CRITERIA = ("kl", "fro")
_MIN_GRAM_BLOCK = 16


def resolve_group_size(
    num_features: int, group_size: int | None, default: int, *, layer: str, option: str = "group_size"
) -> int:
    """The channels-per-group (or, for Group Whitening, the group count) a layer actually uses.

    Rules (the same for every whitening layer):

    * ``None`` means the layer's ``default``. A value larger than ``num_features`` falls back to
      ``num_features`` (one group of all channels), so one config works for layers of different widths.
    * Groups are equal-sized, so that every per-group product is one batched call. An explicit value that
      does not divide ``num_features`` raises. The *default* instead falls back to the largest divisor of
      ``num_features`` not above it (e.g. ResNet-12's 160 channels with a default of 64 use 40), so
      ``create(name, C)`` works for every ``C``.

    Args:
        num_features: the channel count ``C``.
        group_size: the requested value, or ``None`` for the default.
        default: the layer's default.
        layer: layer name for messages.
        option: option name for messages.

    Returns:
        A divisor of ``num_features``.
    """
    if group_size is None:
        value = min(default, num_features)
        while num_features % value:
            value -= 1
        return value
    if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
        raise ValueError(f"{layer}: {option} must be a positive int, got {group_size!r}")
    value = min(group_size, num_features)
    if num_features % value:
        divisors = [d for d in range(1, num_features + 1) if num_features % d == 0]
        raise ValueError(
            f"{layer}: {option}={group_size} does not divide num_features={num_features}; groups must be "
            f"equal-sized. Pick one of {divisors} (or leave {option} unset for the default)"
        )
    return value


def native_grouping(
    num_features: int, groups: int | None, group_size: int | None, *, native: str, layer: str
) -> int | None:
    """The value of a grouped layer's own option (``native``) from ``groups`` and/or ``group_size``.

    Every grouped layer (``groupnorm``, ``groupwhiten``, ``dbn``, ``iternorm``, ``swbn``) takes both options,
    so that one config names grouping one way across layers. The one the layer does not keep natively is
    converted exactly (``group_size = C // groups``, ``groups = C // group_size``); it must divide ``C``.
    Both given must agree (``groups · group_size = C``). Neither: ``None`` (the layer's default).

    Args:
        num_features: the channel count ``C``.
        groups, group_size: the requested values (``None``: not given).
        native: ``"groups"`` or ``"group_size"``, the option the layer resolves itself.
        layer: layer name for messages.

    Example:
        >>> native_grouping(32, 4, None, native="group_size", layer="SWBN")
        8
        >>> native_grouping(32, None, 8, native="groups", layer="GroupNorm")
        4
    """
    given = {"groups": groups, "group_size": group_size}
    for option, value in given.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{layer}: {option} must be a positive int, got {value!r}")
    if groups is not None and group_size is not None:
        if groups * group_size != num_features:
            raise ValueError(
                f"{layer}: groups={groups} and group_size={group_size} disagree for num_features={num_features} "
                f"(groups · group_size must equal it); pass only one of them"
            )
        return given[native]
    other = "group_size" if native == "groups" else "groups"
    if given[other] is None:
        return given[native]
    if num_features % given[other]:
        divisors = [d for d in range(1, num_features + 1) if num_features % d == 0]
        raise ValueError(
            f"{layer}: {other}={given[other]} does not divide num_features={num_features}, so it gives no exact "
            f"{native}; pick one of {divisors} or pass {native} instead"
        )
    return num_features // given[other]


class _ChannelMoments(torch.autograd.Function):
    """Per-channel mean and biased variance with a one-pass backward ``dx = dμ/m + 2 dν (x − μ)/m``.

    With ``group_size > 0`` the group covariances of the centred input come out too (no gradient), and the
    variance is read off their diagonal, which saves a pass when the covariance is needed anyway.
    """

    generate_vmap_rule = True

    @staticmethod
    def forward(x: Tensor, dims: tuple[int, ...], group_size: int) -> tuple[Tensor, Tensor, Tensor]:
        mean = x.mean(dim=dims, keepdim=True)
        centred = x - mean
        if group_size:
            cov = group_second_moment(centred, group_size)
            return mean, cov.diagonal(dim1=-2, dim2=-1).reshape(mean.shape), cov
        # Not linalg.vector_norm: it is ten times slower than this for channels_last input.
        return mean, (centred * centred).mean(dim=dims, keepdim=True), mean.new_zeros(0)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - autograd signature
        x, _, _ = inputs
        mean, _, cov = output
        ctx.mark_non_differentiable(cov)
        ctx.save_for_backward(x, mean)
        ctx.count = x.numel() // mean.numel()

    @staticmethod
    def backward(ctx, grad_mean: Tensor, grad_var: Tensor, _: Tensor) -> tuple[Tensor, None, None]:  # noqa: ANN001
        x, mean = ctx.saved_tensors
        scale = grad_var * (2.0 / ctx.count)
        return torch.addcmul(grad_mean / ctx.count - scale * mean, x, scale), None, None


def channel_moments(x: Tensor) -> tuple[Tensor, Tensor]:
    """Per-channel mean and biased variance over ``(N, H, W)``, cheap to differentiate.

    Same values as :func:`fewshot.norms.functional.batch_moments` (two-pass variance: centre first), but the
    backward is one fused pass over ``x`` instead of the five or so elementwise passes autograd records for
    ``mean`` / subtract / square / ``mean``. The backward is written with differentiable ops, so second
    derivatives (gradgradcheck, second-order MAML) and vmap work.

    Args:
        x: ``(N, C)`` or ``(N, C, H, W)``.

    Returns:
        ``(mean (C,), var (C,))``.
    """
    mean, var, _ = _ChannelMoments.apply(x, (0, *range(2, x.dim())), 0)
    return mean.reshape(-1), var.reshape(-1)


def channel_moments_and_covariance(x: Tensor, group_size: int) -> tuple[Tensor, Tensor, Tensor]:
    """:func:`channel_moments` plus the group covariances of the centred input, in one pass less.

    Args:
        x: ``(N, C)`` or ``(N, C, H, W)``.
        group_size: channels per group ``g`` (divides ``C``).

    Returns:
        ``(mean (C,), var (C,), cov (G, g, g))``; ``mean`` and ``var`` are differentiable, ``cov`` carries no
        gradient and ``var`` is its diagonal.
    """
    mean, var, cov = _ChannelMoments.apply(x, (0, *range(2, x.dim())), group_size)
    return mean.reshape(-1), var.reshape(-1), cov


def symmetrize(a: Tensor) -> Tensor:
    """``(A + Aᵀ)/2`` over the last two dimensions."""
    return 0.5 * (a + a.mT)


def add_ridge(sigma: Tensor, eps: float) -> Tensor:
    """``Σ + eps·I`` for ``(..., g, g)`` matrices; the identity takes ``sigma``'s dtype and device."""
    eye = torch.eye(sigma.shape[-1], dtype=sigma.dtype, device=sigma.device)
    return sigma + eps * eye


def _rows_view(x: Tensor) -> Tensor | None:
    """``x`` as an ``(m, C)`` view when that needs no copy (2-D input or channels_last 4-D input), else None."""
    if x.dim() == 2:
        return x
    xt = x.movedim(1, -1)
    return xt.reshape(-1, x.shape[1]) if xt.is_contiguous() else None


def group_second_moment(x: Tensor, group_size: int, y: Tensor | None = None) -> Tensor:
    """Per-group moment matrices ``(1/m) Σ_j x_j y_jᵀ`` (``y = x``: the covariance if ``x`` is centred).

    One batched matmul over strided views: no copy of ``x`` for NCHW-contiguous or channels_last input. With
    ``y`` (same shape and memory format as ``x``) the cross moment in the same single pass over both, e.g. SWBN's
    ``Σ g_y x̂ᵀ`` for its backward (:mod:`fewshot.norms.swbn_kernel`).

    Args:
        x: ``(N, C)`` or ``(N, C, H, W)`` with ``C`` divisible by ``group_size``.
        group_size: channels per group ``g``.
        y: optional second operand shaped like ``x``; ``None`` means ``x``.

    Returns:
        ``(G, g, g)`` with ``G = C / g``; entry ``[G, a, b]`` is ``(1/m) Σ_j x_{j,a} y_{j,b}`` within group ``G``.
    """
    if y is not None and y.shape != x.shape:
        raise ValueError(f"group_second_moment: y must have x's shape {tuple(x.shape)}, got {tuple(y.shape)}")
    c = x.shape[1]
    groups = c // group_size
    m = x.numel() // c
    rows = _rows_view(x)
    rows_y = rows if y is None else _rows_view(y)
    if rows is not None and rows_y is not None:
        # Batched products of (g × m) blocks with row stride C: MKL is several times slower for g < 16 than
        # for g = 16, so small groups are computed as bigger diagonal blocks and the sub-blocks taken out.
        block = group_size
        while block < _MIN_GRAM_BLOCK and c % (2 * block) == 0:
            block *= 2
        a = rows.reshape(m, c // block, block).permute(1, 2, 0)  # (C/b, b, m), strided view
        b = a if y is None else rows_y.reshape(m, c // block, block).permute(1, 2, 0)
        gram = torch.matmul(a, b.mT) / m
        if block == group_size:
            return gram
        k = block // group_size
        gram = gram.reshape(c // block, k, group_size, k, group_size).diagonal(dim1=1, dim2=3)
        return gram.permute(0, 3, 1, 2).reshape(groups, group_size, group_size)
    a = x.reshape(x.shape[0], groups, group_size, -1)  # (N, G, g, H·W), a view for NCHW input
    b = a if y is None else y.reshape(y.shape[0], groups, group_size, -1)
    return torch.matmul(a, b.mT).sum(dim=0) / m


def correlation(second_moment: Tensor, rstd: Tensor) -> Tensor:
    """``diag(r) Σ diag(r)`` per group: the covariance of data standardized by ``r = 1/sqrt(var + eps)``.

    Args:
        second_moment: ``(G, g, g)`` covariance of the centred data.
        rstd: ``(C,)`` reciprocal standard deviations, ``C = G·g``.

    Returns:
        ``(G, g, g)``.
    """
    r = rstd.reshape(second_moment.shape[0], -1)
    return second_moment * r[:, :, None] * r[:, None, :]


def shrink_to_identity(corr: Tensor, rho: float) -> Tensor:
    """``(1 − ρ) R + ρ I`` per group: a correlation matrix shrunk towards the identity.

    Ledoit & Wolf, "A well-conditioned estimator for large-dimensional covariance matrices", J. Multivariate
    Analysis 88 (2004): with few samples per dimension the sample covariance is ill-conditioned or singular, and a
    convex combination with a scaled identity bounds its spectrum below. For a correlation matrix (unit diagonal)
    the identity is the natural target and the diagonal stays 1. The eigenvalues ``λ`` of ``R`` become
    ``(1 − ρ) λ + ρ ≥ ρ``, so the whitening ``R_ρ^{-1/2}`` has eigenvalues ``≤ 1/√ρ``.

    Args:
        corr: ``(..., g, g)``.
        rho: shrinkage ``0 ≤ ρ < 1`` (``0`` returns ``corr`` itself).

    Returns:
        ``(..., g, g)``.
    """
    if rho == 0:
        return corr
    eye = torch.eye(corr.shape[-1], dtype=corr.dtype, device=corr.device)
    return (1.0 - rho) * corr + rho * eye


def block_diagonal(matrix: Tensor) -> Tensor:
    """The ``(C, C)`` block-diagonal matrix with the ``(G, g, g)`` blocks of ``matrix`` on its diagonal."""
    groups, g, _ = matrix.shape
    eye = torch.eye(groups, dtype=matrix.dtype, device=matrix.device)
    return (eye[:, None, :, None] * matrix[:, :, None, :]).reshape(groups * g, groups * g)


def apply_group_matrix(x: Tensor, matrix: Tensor, bias: Tensor | None = None) -> Tensor:
    """``y_c = Σ_j A[G(c)]_{c j} x_j + b_c``: multiply each channel group of ``x`` by its ``g × g`` matrix.

    4-D NCHW-contiguous inputs: one batched matmul of the ``(G, g, g)`` matrices with the ``(N, G, g, H·W)`` view
    (faster there than the grouped convolution, see ``docs/performance.md``); other 4-D
    inputs (channels_last, and inside ``vmap``, where contiguity cannot be queried) one grouped 1×1 convolution,
    which is fast there and keeps the memory format; 2-D inputs a broadcast matmul. All are differentiable twice
    and vmap-legal.

    Args:
        x: ``(N, C)`` or ``(N, C, H, W)``.
        matrix: ``(G, g, g)`` with ``G·g = C``.
        bias: optional ``(C,)`` added to the output.

    Returns:
        Same shape as ``x`` (and, for 4-D input, the same memory format).
    """
    groups, g, _ = matrix.shape
    if x.dim() == 4:
        if not is_batchedtensor(x) and x.is_contiguous():
            n, _, h, w = x.shape
            y = torch.matmul(matrix, x.reshape(n, groups, g, h * w))
            if bias is not None:
                y = y + bias.reshape(groups, g, 1)
            return y.reshape(x.shape)
        return F.conv2d(x, matrix.reshape(groups * g, g, 1, 1), bias, groups=groups)
    y = torch.matmul(x.reshape(x.shape[0], groups, 1, g), matrix.mT).reshape(x.shape)
    return y if bias is None else y + bias


def newton_schulz_scalar(lam: Tensor, iterations: int) -> Tensor:
    """IterNorm's scalar recursion ``p ← 1.5 p − 0.5 p³ λ`` from ``p = 1`` (elementwise).

    The Newton iteration below acts on each eigenvalue ``λ`` of the trace-normalized covariance like this
    (Huang et al., CVPR 2019, arXiv 1904.03441); used by tests and diagnostics.
    """
    p = torch.ones_like(lam)
    for _ in range(iterations):
        p = 1.5 * p - 0.5 * p**3 * lam
    return p


def newton_schulz_inv_sqrt(sigma: Tensor, iterations: int) -> Tensor:
    """IterNorm's whitening matrix ``W = P_T / sqrt(tr Σ) ≈ Σ^{-1/2}`` by Newton iterations.

    From Huang, Zhou, Zhu, Liu, Shao, "Iterative Normalization: Beyond Standardization towards Efficient
    Whitening", CVPR 2019, arXiv 1904.03441: ``Σ_N = Σ / tr Σ``, ``P_0 = I``,
    ``P_k = (3 P_{k-1} − P_{k-1}³ Σ_N) / 2``. Plain autograd ops, so it is differentiable to any order. With few
    iterations it under-whitens small-eigenvalue directions on purpose (each step at most multiplies a direction
    by 1.5); past convergence the uncoupled iteration is unstable, so keep ``iterations`` small (3-8).

    Args:
        sigma: ``(..., g, g)`` symmetric positive-definite (add the ridge first, :func:`add_ridge`).
        iterations: ``T``, a Python int ≥ 0.

    Returns:
        ``(..., g, g)`` symmetric.
    """
    trace = sigma.diagonal(dim1=-2, dim2=-1).sum(-1)[..., None, None]
    sigma_n = sigma / trace
    eye = torch.eye(sigma.shape[-1], dtype=sigma.dtype, device=sigma.device)
    p = eye.expand_as(sigma)
    for k in range(iterations):
        p3 = eye.expand_as(sigma) if k == 0 else p @ p @ p
        p = 1.5 * p - 0.5 * (p3 @ sigma_n)
    return p * trace.rsqrt()


def _zca_from_eigh(evals: Tensor, evecs: Tensor, floor: float) -> Tensor:
    inv_sqrt = evals.clamp_min(floor).rsqrt()
    return (evecs * inv_sqrt[..., None, :]) @ evecs.mT


def _zca_grad(sigma: Tensor, grad_w: Tensor, floor: float) -> Tensor:
    """Exact gradient of ``Σ ↦ Σ^{-1/2}`` (Daleckii-Krein) without dividing by eigenvalue gaps.

    ``dL/dΣ = U (F ⊙ Uᵀ Ḡ U) Uᵀ`` with ``Ḡ`` the symmetrized upstream gradient and the divided difference of
    ``f(λ) = λ^{-1/2}`` written in closed form, ``F_ij = −1 / (s_i s_j (s_i + s_j))``, ``s = sqrt(λ)``, which is
    finite (``= f'(λ)``) for equal eigenvalues. ``eigh``'s own backward divides by ``λ_i − λ_j`` and is not.
    Written with differentiable ops, so the double backward (second-order MAML, gradgradcheck) goes through
    ``eigh``'s autograd, which is exact for distinct eigenvalues.
    """
    evals, evecs = torch.linalg.eigh(sigma)
    s = evals.clamp_min(floor).sqrt()
    f = -1.0 / (s[..., :, None] * s[..., None, :] * (s[..., :, None] + s[..., None, :]))
    inner = evecs.mT @ symmetrize(grad_w) @ evecs
    return evecs @ (f * inner) @ evecs.mT


class _ZCAInvSqrt(torch.autograd.Function):
    """``Σ^{-1/2}`` by eigendecomposition with the gap-free backward of :func:`_zca_grad`."""

    generate_vmap_rule = True

    @staticmethod
    def forward(sigma: Tensor, floor: float) -> Tensor:
        evals, evecs = torch.linalg.eigh(sigma)
        return _zca_from_eigh(evals, evecs, floor)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:  # noqa: ANN001 - autograd signature
        sigma, floor = inputs
        ctx.save_for_backward(sigma)
        ctx.floor = floor

    @staticmethod
    def backward(ctx, grad_w: Tensor) -> tuple[Tensor, None]:  # noqa: ANN001
        (sigma,) = ctx.saved_tensors
        return _zca_grad(sigma, grad_w, ctx.floor), None


def zca_inv_sqrt(sigma: Tensor, floor: float = 0.0) -> Tensor:
    """ZCA whitening matrix ``Σ^{-1/2} = U Λ^{-1/2} Uᵀ`` with a backward that is finite on repeated eigenvalues.

    Used by DBN (Huang, Yang, Lang, Deng, "Decorrelated Batch Normalization", CVPR 2018, arXiv 1804.08450).
    Safeguards: the symmetric part of ``sigma`` is used (so the gradient is symmetric and the function is
    defined for any square input); eigenvalues are clamped at ``floor`` (pass the ridge ``eps``: only
    eigenvalues that rounding pushed below the ridge are touched); the backward uses the closed-form divided
    differences of :func:`_zca_grad`, so dead channels and 1-shot supports (repeated eigenvalues) give finite,
    exact first derivatives. Second derivatives go through ``eigh``'s autograd (exact on generic inputs,
    non-finite on exactly repeated eigenvalues).

    Args:
        sigma: ``(..., g, g)`` symmetric positive-definite (add the ridge first, :func:`add_ridge`).
        floor: lower clamp for the eigenvalues (a Python float ≥ 0).

    Returns:
        ``(..., g, g)`` symmetric; ``W Σ W = I`` and ``W Σ = Σ W``.
    """
    return _ZCAInvSqrt.apply(symmetrize(sigma), float(floor))


def swbn_delta(w: Tensor, corr: Tensor, criterion: str = "kl", tau: float = 1e-12) -> Tensor:
    """The SWBN whitening-matrix descent direction ``ΔW`` (the step is ``W ← W − α ΔW``).

    From Zhang, Nezhadarya, Fashandi, Liu, Graham, Shah, "Stochastic Whitening Batch Normalization", CVPR 2021,
    arXiv 2106.04413 (update rules as specified in docs: the paper body was not retrievable). With
    ``E = W R Wᵀ − I``:

    * ``"kl"``: the relative (natural) gradient of ``KL(N(0, WRWᵀ) ‖ N(0, I))``: ``ΔW = E W``.
    * ``"fro"``: the gradient of ``½‖I − WRWᵀ‖_F``: ``ΔW = E W R / max(‖E‖_F, tau)`` (``tau`` guards the 0/0
      at the fixed point).

    Both vanish exactly when ``W R Wᵀ = I``.

    Args:
        w: ``(..., g, g)`` current whitening matrix.
        corr: ``(..., g, g)`` covariance of the standardized batch, ``R``.
        criterion: ``"kl"`` or ``"fro"``.
        tau: floor of the Frobenius norm (``"fro"`` only).

    Returns:
        ``(..., g, g)``.
    """
    eye = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
    wr = w @ corr
    err = wr @ w.mT - eye
    if criterion == "kl":
        return err @ w
    if criterion == "fro":
        norm = torch.linalg.matrix_norm(err).clamp_min(tau)[..., None, None]
        return err @ wr / norm
    raise ValueError(f"criterion must be one of {SWBN_CRITERIA}, got {criterion!r}")


def swbn_step(w: Tensor, corr: Tensor, alpha: float | Tensor, criterion: str = "kl", tau: float = 1e-12) -> Tensor:
    """One SWBN whitening-matrix update: ``W ← sym(W − α ΔW(W, R))`` (see :func:`swbn_delta`).

    Symmetrizing after the step keeps ``W`` a ZCA-type (symmetric) whitening matrix under stochastic ``R``
    and removes rounding drift. Starting from ``W = I`` with a fixed ``R``, the KL iteration converges to
    ``R^{-1/2}`` with time constant ``≈ 1/(2α)`` steps; it is stable for ``α < 1/(λ_max(R) − 1)``, and
    ``λ_max(R) ≤ g`` because ``tr R = g``.

    Args:
        w: ``(..., g, g)``.
        corr: ``(..., g, g)``.
        alpha: the whitening rate ``α`` (float or 0-d tensor).
        criterion: ``"kl"`` or ``"fro"``.
        tau: see :func:`swbn_delta`.

    Returns:
        The new ``(..., g, g)`` symmetric matrix (``w`` itself is not modified).
    """
    return symmetrize(w - alpha * swbn_delta(w, corr, criterion, tau))


def whiteness_error(w: Tensor, cov: Tensor) -> Tensor:
    """``‖W Σ Wᵀ − I‖_F / sqrt(g)`` per matrix: 0 for a perfect whitening of covariance ``Σ``.

    Args:
        w: ``(..., g, g)``.
        cov: ``(..., g, g)``.

    Returns:
        ``(...)``.
    """
    eye = torch.eye(w.shape[-1], dtype=w.dtype, device=w.device)
    return torch.linalg.matrix_norm(w @ cov @ w.mT - eye) / w.shape[-1] ** 0.5


def per_sample_group_covariance(x: Tensor, groups: int) -> tuple[Tensor, Tensor]:
    """Group Whitening's per-sample view: each sample's groups as rows, centred, and their covariance.

    Huang, Zhou, Liu, Zhu, Shao, "Group Whitening: Balancing Learning Efficiency and Representational
    Capacity", CVPR 2021, arXiv 2009.13333: sample ``n``'s ``C·H·W`` values are reshaped to ``G`` rows of
    ``C/G·H·W`` values (one row per group of consecutive channels).

    Args:
        x: ``(N, C)`` or ``(N, C, H, W)`` with ``C`` divisible by ``groups``.
        groups: ``G``.

    Returns:
        ``(centred (N, G, k), covariance (N, G, G))`` with ``k = C/G·H·W`` and the covariance divided by ``k``.
    """
    rows = x.reshape(x.shape[0], groups, -1)
    centred = rows - rows.mean(dim=2, keepdim=True)
    return centred, centred @ centred.mT / rows.shape[2]
