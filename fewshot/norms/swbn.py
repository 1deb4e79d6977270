"""Stochastic Whitening Batch Normalization (``swbn``)."""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor

from fewshot.host_reads import defers_host_reads
from fewshot.norms import functional as FN
from fewshot.norms import whitening_math as WM
from fewshot.norms.base import NormLayer
from fewshot.norms.kernels import fused_kernels_allowed
from fewshot.norms.policy import Policy
from fewshot.norms.registry import NORM_LAYERS
from fewshot.norms.sufficient import count_of, merge_covariances
from fewshot.norms.swbn_kernel import standardize_then_group_matrix
from fewshot.norms.swbn_rows import batch_moments, rows_kernel_usable, standardize_whiten_rows

__all__ = ["SWBN", "SWBNStats"]

DEFAULT_GROUP_SIZE = 16
DEFAULT_ALPHA = 1e-3


class SWBNStats(NamedTuple):
    """Statistics of one SWBN forward.

    Attributes:
        count: ``m``, values per channel (float64 0-dim; 0 for statistics read from the state).
        mean: ``(C,)`` per-channel mean (batch, support set, or running ``μ_E``).
        var: ``(C,)`` per-channel biased variance (or running ``ν_E``, unbiased like BN's).
        corr: ``(G, g, g)`` covariance ``R_B`` of the standardized batch (no gradient), what the ``W`` update
            needs; ``None`` for statistics read from the state.
    """

    count: Tensor
    mean: Tensor
    var: Tensor
    corr: Tensor | None


@NORM_LAYERS.register("swbn")
class SWBN(NormLayer):
    """Stochastic Whitening Batch Normalization: BN standardization followed by an online-learned whitening.

    Zhang, Nezhadarya, Fashandi, Liu, Graham, Shah, "Stochastic Whitening Batch Normalization", CVPR 2021,
    arXiv 2106.04413. The paper's method section could not be retrieved; the update rules follow the project's
    specification (norms-spec §2), which rests on the paper's abstract and Fig. 1, the patent claims and a
    third-party re-implementation.

    Training forward, per group of ``g`` channels (``m = N·H·W`` values per channel):

    1. batch moments ``μ, ν`` (biased variance); running ``μ_E, ν_E`` updated by EMA (``momentum``);
    2. standardize ``X_s = (X − μ)/sqrt(ν + eps)``;
    3. ``R_B = X_s X_sᵀ / m`` (``g × g``, no autograd);
    4. one stochastic step on the whitening loss, ``W ← sym(W − α ΔW)``, with ``criterion="kl"``:
       ``ΔW = (W R_B Wᵀ − I) W`` or ``"fro"``: ``ΔW = (W R_B Wᵀ − I) W R_B / max(‖E‖_F, τ)``;
    5. whiten with the *updated* ``W``: ``Y = γ ⊙ W X_s + β``.

    ``W`` is a buffer (per group ``g × g``, initialised to ``I``, so a fresh layer equals BN). It is changed only
    in the forward pass, under no-grad, and only when state updates are on (``layer.training`` and
    ``update_stats``, i.e. not inside ``fewshot.norms.frozen_stats``); it is held fixed in the backward (no
    gradient to ``W``, and the update is never differentiated). Gradients flow through ``μ`` and ``ν`` as in BN.
    Eval mode (``policy="running"``) standardizes with ``μ_E, ν_E`` and applies ``W`` without any update. With
    ``policy="support"`` the support set's ``μ, ν`` standardize the query; ``W`` is the global state either way.
    ``track_running_stats=False`` keeps no state at all, ``W`` included, so the layer is then batch-statistics BN.

    Choices where the paper is silent (the reasons and the measurements behind them: docs/swbn.md):

    * ``alpha`` (whitening rate) default ``1e-3``, a rate per state update; stable for ``α < 1/(g − 1)``, which
      ``tr R = g`` guarantees (a warning is issued above it). MAML updates the state once per outer iteration by
      default, so ``α`` is a rate per optimizer step there too; with one update per task use ``α / B``.
    * ``criterion`` default ``"kl"`` (linear convergence to ``R^{-1/2}`` whatever the spectrum; norms-spec §2.15).
    * ``group_size`` default 16 channels per group (smaller groups save no time; ``results/bench_norms.csv``).
    * ``eps`` 1e-5 and ``momentum`` 0.1 as in BN, and ``running_var`` stores the unbiased variance like BN, so
      ``alpha=0`` reproduces BN exactly in both modes.
    * ``W`` is symmetrized after every step (ZCA-type whitening; avoids rotation drift).
    * ``tau`` 1e-12 only guards the Fro step's 0/0 at an exact fixed point; it never binds otherwise.
    * ``shrinkage`` ``ρ`` (default 0, the specification's rule): the update whitens ``(1 − ρ) R_B + ρ I``
      (:func:`~fewshot.norms.whitening_math.shrink_to_identity`), which bounds ``W``'s eigenvalues by ``1/√ρ``
      where a group's channels span fewer than ``g`` dimensions (Conv-4's first layer on grey images). With any
      ``ρ`` the eigenvalues of ``W`` are capped at ``1/√eps``, so ``W`` stays finite on rank-deficient batches
      (on a device at the trainer's log rows, with a sync-free bound in between: :func:`_cap_spectrum`).

    The learning-rate schedule: the authors reportedly keep ``α / lr`` constant. The trainer calls
    :func:`fewshot.norms.notify_lr_scale` (this layer's :meth:`on_lr_scale`, or :meth:`set_whitening_rate`
    directly) with ``lr_now / lr_initial`` whenever the schedule changes the learning rate; the factor is a plain
    attribute (not saved in the state dict), so a resumed trainer sets it again.

    Args:
        num_features, eps, momentum, affine, track_running_stats, policy, device, dtype: see
            :class:`~fewshot.norms.base.NormLayer`.
        group_size: channels per group ``g`` (default 16; larger than ``num_features`` → one group; see
            :func:`~fewshot.norms.whitening_math.resolve_group_size`).
        groups: number of groups instead (exactly ``group_size = C // groups``; see
            :func:`~fewshot.norms.whitening_math.native_grouping`).
        alpha: whitening rate ``α ≥ 0`` (``0`` freezes ``W`` and gives BN).
        criterion: ``"kl"`` or ``"fro"``.
        tau: floor of ``‖E‖_F`` in the Fro step.
        shrinkage: ``ρ ∈ [0, 1)``, the update whitens ``(1 − ρ) R_B + ρ I`` (see above; 0 = the plain rule).

    Shape:
        input ``(N, C)`` or ``(N, C, H, W)`` (any memory format; channels_last is kept); output the same.
        Buffers: ``running_mean (C,)``, ``running_var (C,)``, ``whitening_matrix (G, g, g)``.

    Example:
        >>> layer = SWBN(32, group_size=8, alpha=1e-2)
        >>> y = layer(torch.randn(10, 32, 5, 5))
        >>> layer.whitening_matrix.shape
        torch.Size([4, 8, 8])
    """

    state_buffers = ("running_mean", "running_var", "whitening_matrix")
    hparams = ("group_size", "groups", "alpha", "criterion", "tau", "shrinkage")

    def _init_layer(
        self,
        factory_kwargs: dict[str, Any],
        *,
        group_size: int | None = None,
        groups: int | None = None,
        alpha: float = DEFAULT_ALPHA,
        criterion: str = "kl",
        tau: float = 1e-12,
        shrinkage: float = 0.0,
    ) -> None:
        name = type(self).__name__
        group_size = WM.native_grouping(self.num_features, groups, group_size, native="group_size", layer=name)
        self.group_size = WM.resolve_group_size(self.num_features, group_size, DEFAULT_GROUP_SIZE, layer=name)
        self.groups = self.num_features // self.group_size
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not math.isfinite(alpha) or alpha < 0:
            raise ValueError(f"{name}: alpha (whitening rate) must be a finite number >= 0, got {alpha!r}")
        if criterion not in WM.SWBN_CRITERIA:
            raise ValueError(f"{name}: criterion must be one of {WM.SWBN_CRITERIA}, got {criterion!r}")
        if not (isinstance(tau, (int, float)) and tau > 0):
            raise ValueError(f"{name}: tau must be a number > 0, got {tau!r}")
        if isinstance(shrinkage, bool) or not isinstance(shrinkage, (int, float)) or not 0 <= shrinkage < 1:
            raise ValueError(
                f"{name}: shrinkage (of R_B towards I in the W update) must be a number in [0, 1), got {shrinkage!r}; "
                "0 is the plain SWBN update, 0.1 bounds W's eigenvalues by 1/sqrt(0.1) = 3.2"
            )
        self.alpha = float(alpha)
        self.shrinkage = float(shrinkage)
        self.criterion = criterion
        self.tau = float(tau)
        self.whitening_rate_factor = 1.0
        self._warn_if_unstable(self.alpha, stacklevel=4)
        if not self.track_running_stats:
            warnings.warn(
                "SWBN with track_running_stats=False keeps no whitening matrix, so it is batch-statistics BN; for a "
                "transductive SWBN that still learns W use policy='transductive' with track_running_stats=True",
                stacklevel=4,
            )

    def _warn_if_unstable(self, alpha: float, stacklevel: int) -> None:
        if self.group_size > 1 and alpha >= 1.0 / (self.group_size - 1):
            warnings.warn(
                f"SWBN whitening rate alpha={alpha:g} is at or above the stability bound 1/(group_size-1)="
                f"{1.0 / (self.group_size - 1):.3g} for group_size={self.group_size}; W may oscillate or diverge "
                "on strongly correlated channels. Use a smaller alpha (default 1e-3)",
                stacklevel=stacklevel,
            )

    # ----------------------------------------------------------------- whitening rate
    @property
    def whitening_rate(self) -> float:
        """The effective whitening rate ``α · factor`` used by the next update."""
        return self.alpha * self.whitening_rate_factor

    def set_whitening_rate(self, factor: float) -> None:
        """Use ``α · factor`` from now on (e.g. ``factor = lr_now / lr_initial`` to keep ``α / lr`` constant).

        Args:
            factor: a finite number ``≥ 0``; ``1`` restores the configured ``alpha``.
        """
        if isinstance(factor, bool) or not isinstance(factor, (int, float)) or not math.isfinite(factor) or factor < 0:
            raise ValueError(f"whitening-rate factor must be a finite number >= 0, got {factor!r}")
        self.whitening_rate_factor = float(factor)
        self._warn_if_unstable(self.whitening_rate, stacklevel=3)

    # ----------------------------------------------------------------- state
    def _make_state(self, factory_kwargs: dict[str, Any]) -> dict[str, Tensor]:
        eye = torch.eye(self.group_size, **factory_kwargs)
        return {
            "running_mean": torch.zeros(self.num_features, **factory_kwargs),
            "running_var": torch.ones(self.num_features, **factory_kwargs),
            "whitening_matrix": eye.expand(self.groups, -1, -1).clone(),
        }

    def _load_running_moments(self, mean: Tensor, var: Tensor) -> None:
        """Take BN's running moments; ``W`` becomes ``I`` so the eval-mode layer reproduces that BN."""
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)
        self.whitening_matrix.copy_(self._make_state({"dtype": mean.dtype, "device": mean.device})["whitening_matrix"])

    # ----------------------------------------------------------------- the pure pieces
    def _batch_stats(self, x: Tensor) -> SWBNStats:
        mean, var, cov = WM.channel_moments_and_covariance(x, self.group_size)
        return SWBNStats(count_of(x), mean, var, WM.correlation(cov, torch.rsqrt(var.detach() + self.eps)))

    def _running_stats(self, state: dict[str, Tensor]) -> SWBNStats:
        zero = state["num_batches_tracked"].new_zeros((), dtype=torch.float64)
        return SWBNStats(zero, state["running_mean"], state["running_var"], None)

    def _merge_stats(self, parts: list[SWBNStats]) -> SWBNStats:
        """Merge through the centred covariances ``C = D R D``, ``D = diag(sqrt(var + eps))`` (Chan's rule)."""
        covs = [(p.count, p.mean, WM.correlation(p.corr, torch.sqrt(p.var + self.eps))) for p in parts]
        count, mean, cov = merge_covariances(covs, self.group_size)
        var = cov.diagonal(dim1=-2, dim2=-1).reshape(-1)
        return SWBNStats(count, mean, var, WM.correlation(cov, torch.rsqrt(var + self.eps)))

    def _next_state(self, state: dict[str, Tensor], stats: SWBNStats, factor: float | Tensor) -> dict[str, Tensor]:
        """EMA of the moments, then one step of the whitening criterion on ``R_B``, capped at ``1/sqrt(eps)``."""
        unbiased_var = FN.unbias_variance(stats.var, stats.count)
        w = state["whitening_matrix"]
        alpha = self.whitening_rate
        if alpha > 0:
            corr = WM.shrink_to_identity(stats.corr, self.shrinkage)
            w = WM.swbn_step(w, corr, alpha, self.criterion, self.tau)
            w = _cap_spectrum(w, self._spectrum_cap())
        return {
            "running_mean": FN.ema(state["running_mean"], stats.mean, factor),
            "running_var": FN.ema(state["running_var"], unbiased_var, factor),
            "whitening_matrix": w,
        }

    def _spectrum_cap(self) -> float:
        """The bound ``1/sqrt(eps)`` on the eigenvalues of ``W`` (none for ``eps = 0``)."""
        return math.inf if self.eps == 0 else self.eps**-0.5

    def enforce_state_bounds(self) -> None:
        """On a device, cap the state's ``W`` as every CPU update does (see :func:`_cap_spectrum`); reads the device.

        The trainer calls it at every log row: a point fixed by the episode count, so a resumed run applies it
        where the uninterrupted one did. On the CPU the updates have capped ``W`` already, and this does nothing.
        """
        if not self.track_running_stats or not defers_host_reads(self.whitening_matrix):
            return
        w = self.whitening_matrix
        capped = _cap_spectrum_now(w, self._spectrum_cap())
        if capped is not w:
            with torch.no_grad():
                w.copy_(capped)

    def _current_w(self, x: Tensor, state: dict[str, Tensor]) -> Tensor:
        """``W`` (G, g, g) for this forward: a copy of the state's, or ``I`` when the layer keeps no state."""
        g = self.group_size
        if "whitening_matrix" not in state:  # no state: plain BN with batch statistics
            return torch.eye(g, dtype=x.dtype, device=x.device).expand(self.groups, g, g)
        # A copy: the buffer is updated in place by later training forwards that share this graph.
        return state["whitening_matrix"].clone()

    def _apply_stats(self, x: Tensor, stats: SWBNStats, state: dict[str, Tensor], params: dict[str, Tensor]) -> Tensor:
        """``weight ⊙ W diag(rstd)(x − μ) + bias`` as one grouped 1×1 product with a folded bias."""
        g = self.group_size
        rstd = torch.rsqrt(stats.var + self.eps).reshape(self.groups, 1, g)
        matrix = self._current_w(x, state) * rstd
        if params["weight"] is not None:
            matrix = matrix * params["weight"].reshape(self.groups, g, 1)
        shift = -(matrix @ stats.mean.reshape(self.groups, g, 1)).reshape(-1)
        if params["bias"] is not None:
            shift = shift + params["bias"]
        return WM.apply_group_matrix(x, matrix, shift)

    def _batch_forward(self, x: Tensor, flow: Any) -> Tensor:
        """A batch-statistics forward; on a fused kernel where exact: ``weight ⊙ W x̂ + bias``.

        Fused means the compiled row kernel (:mod:`~fewshot.norms.swbn_rows`) on channels_last or 2-D CPU input,
        else torch's batch-norm kernel followed by the group product (:mod:`~fewshot.norms.swbn_kernel`).

        ``R_B`` is computed only when a state update or a collecting flow will read it. The fused path is the same
        function as :meth:`apply` with batch statistics (``W diag(rstd)(x − μ) = W x̂``), used where
        :func:`~fewshot.norms.kernels.fused_kernels_allowed` and nobody differentiates the statistics (not the
        ``support`` policy). ``R_B`` is the group second moment of ``x̂`` (equal to
        :func:`~fewshot.norms.whitening_math.correlation` of the centred covariance up to rounding), without
        autograd. The state update runs before ``W`` is read, as on the exact path.
        """
        self._check_batch_size(x)  # our message, before the kernel raises its own
        wants_corr = self._updates_state() or (flow is not None and flow.collects)  # R_B only feeds the update
        if self.policy is Policy.SUPPORT or not fused_kernels_allowed(x, self.weight, self.bias):
            stats = self._batch_stats(x) if wants_corr else SWBNStats(count_of(x), *WM.channel_moments(x), None)
            self._observe(stats, flow)
            return self.apply(x, stats)
        if rows_kernel_usable(x, self.group_size):  # the compiled kernel: no x̂ stored, one pass each way
            mean, var, invstd, corr = batch_moments(x, self.group_size, self.eps, wants_corr)
            self._observe(SWBNStats(count_of(x), mean, var, corr), flow)
            matrix = self._current_w(x, self.state())
            return standardize_whiten_rows(x, mean, invstd, matrix, self.weight, self.bias, self.eps)
        with torch.no_grad():  # the backward is standardize_then_group_matrix's closed form
            x_hat, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, self.eps)
        var = (invstd.double().pow(-2) - self.eps).clamp_min(0).to(invstd.dtype)
        corr = WM.group_second_moment(x_hat, self.group_size) if wants_corr else None
        self._observe(SWBNStats(count_of(x), mean, var, corr), flow)
        matrix = self._current_w(x, self.state())
        return standardize_then_group_matrix(x, x_hat, invstd, matrix, self.weight, self.bias, self.eps)

    def on_lr_scale(self, factor: float) -> None:
        """Keep ``α / lr`` constant, as the SWBN authors reportedly advise: the whitening rate becomes ``α·factor``."""
        self.set_whitening_rate(factor)


def _cap_spectrum(w: Tensor, cap: float) -> Tensor:
    """Symmetric ``w`` (..., g, g) with its eigenvalues clamped to ``[-cap, cap]``; ``w`` itself where none exceeds.

    SWBN's bound on ``W`` (``cap = 1/sqrt(eps)``): the exact whitening matrix of ``R + eps·I`` has eigenvalues
    ``(λ + eps)^{-1/2} ≤ 1/sqrt(eps)`` (316 for eps = 1e-5), so a ``W`` beyond it whitens nothing real. Without
    the cap, with ``shrinkage = 0`` on rank-deficient batches, ``W`` grows like ``(1 + α)^t`` along the null
    directions until it overflows. Trained layers stay far below it (largest singular values 9.6–55 in
    ``results/swbn_spectrum.csv`` and the MAML run), so it never binds in normal training, and below it ``W``
    is returned bit for bit (the Frobenius norm, an upper bound of the spectral norm, is checked first).

    On a device (:func:`~fewshot.host_reads.defers_host_reads`) the eigenvalue clamp cannot run inside a step:
    deciding whether it binds reads the device, and ``torch.linalg.eigh`` waits for the host (it checks its
    convergence there). There each update does only what needs no read, :func:`_bound_frobenius_norm`, which
    leaves ``w`` bit for bit unless its eigenvalues certainly exceed ``cap``, and the trainer applies the clamp
    itself (:func:`_cap_spectrum_now`) to the state at every log row (:meth:`SWBN.enforce_state_bounds`). So ``W``
    is the CPU rule's bit for bit wherever the cap does not bind; where it binds, ``W`` may exceed the cap between
    log rows by the growth of those updates (``(1 + α)^k`` along directions the data does not occupy), never
    beyond a Frobenius norm of ``sqrt(g)·cap``.
    """
    if defers_host_reads(w):
        return _bound_frobenius_norm(w, math.sqrt(w.shape[-1]) * cap)
    return _cap_spectrum_now(w, cap)


def _bound_frobenius_norm(w: Tensor, bound: float) -> Tensor:
    """``w`` (..., g, g) scaled down to Frobenius norm ``bound`` where its norm exceeds it; ``w`` itself elsewhere.

    No host read. With ``bound = sqrt(g)·cap`` it never changes a ``w`` whose eigenvalues all lie within
    ``[-cap, cap]`` (then ``‖w‖_F ≤ sqrt(g)·max |λ| ≤ bound``): a safety net that keeps ``W`` finite on a device
    between the log rows where the exact cap is applied. The norm is taken in float64 (no overflow).
    """
    norm = torch.linalg.matrix_norm(w, dtype=torch.float64)[..., None, None]
    return torch.where(norm > bound, w * (bound / norm).to(w.dtype), w)


def _cap_spectrum_now(w: Tensor, cap: float) -> Tensor:
    """:func:`_cap_spectrum`'s clamp on any device, at once (reads ``w`` on the host: not inside a device step)."""
    if not bool((torch.linalg.matrix_norm(w) > cap).any()) or not bool(torch.isfinite(w).all()):
        return w  # within the cap, or non-finite (then the base class restores the previous state)
    vals, vecs = torch.linalg.eigh(w)
    capped = (vecs * vals.clamp(-cap, cap).unsqueeze(-2)) @ vecs.mT
    return torch.where((vals.abs().amax(-1) > cap)[..., None, None], capped, w)
