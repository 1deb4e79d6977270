"""Stochastic Whitening Batch Normalization (``swbn``) and the helper that makes α follow the learning rate."""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fewshot.norms import functional as FN
from fewshot.norms import whitening_math as WM
from fewshot.norms.base import NormLayer
from fewshot.norms.kernels import fused_kernels_allowed
from fewshot.norms.registry import NORM_LAYERS
from fewshot.norms.swbn_kernel import standardize_then_group_matrix

__all__ = ["SWBN", "SWBNStats", "scale_whitening_rate"]

DEFAULT_GROUP_SIZE = 16
DEFAULT_ALPHA = 1e-3


class SWBNStats(NamedTuple):
    """Statistics of one SWBN forward.

    Attributes:
        mean: ``(C,)`` per-channel mean (batch, cached support, or running ``μ_E``).
        var: ``(C,)`` per-channel biased variance (or running ``ν_E``, unbiased like BN's).
        corr: ``(G, g, g)`` covariance ``R_B`` of the standardized batch, computed without autograd and only
            when this forward updates the state (else ``None``).
    """

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

    Choices where the paper is silent (each checked by a test or the benchmark):

    * ``alpha`` (whitening rate) default ``1e-3``. The third-party value ``α = 1e-5`` barely moves ``W`` in
      episodic training: per eigen-direction the KL step contracts the error by ``1 − 2α``, a relaxation time of
      ``≈ 1/(2α) = 5·10⁴`` updates, while a few-shot run has 10⁴–10⁵ episodes with one update each (in
      simulation the whiteness error only fell from 0.90 to 0.61 after 2·10⁴ steps), so ``W`` would stay near
      ``I`` and SWBN would be BN. ``α = 1e-3`` relaxes in ``≈ 500`` updates and averages ``R_B`` over about as
      many episodes; it is far inside the stability bound ``α < 1/(λ_max(R) − 1)``, and ``λ_max(R) ≤ g`` since
      ``tr R = g``, so ``α < 1/(g − 1)`` (1/15 for ``g = 16``) is always safe. A warning is issued above it.
      MAML (:mod:`fewshot.learners.maml`) updates the state once per outer iteration by default, on the support
      sets of the meta-batch together, so ``α`` is a rate per optimizer step there too. With one update per task
      (``norm_state_update="task"``, fewshot 0.1.0) a meta-batch of ``B`` tasks takes ``B`` steps per outer
      iteration and ``α / B`` gives the same rate. Measured that way on Omniglot 5-way 1-shot MAML (``B = 32``,
      ``results/pilots/`` and ``results/runs/``): with ``α = 1e-3`` ``W`` relaxed within ~16 outer iterations,
      the training loss rose from 3.0 to 3.8 over the first 300 iterations (validation 44% against BN's 68%),
      while ``α = 1e-3/32`` followed BN's loss curve.
    * ``criterion`` default ``"kl"``: the KL relative-gradient step converges linearly to ``R^{-1/2}`` at a rate
      independent of the spectrum, while the Frobenius step is a normalized gradient that hovers at distance
      ``O(α)``; with fresh batches the population whiteness error of Fro is markedly worse at small ``m`` (0.49 vs
      0.13 for ``m = 25``, 0.30 vs 0.064 for ``m = 80``; norms-spec §2.15).
    * ``group_size`` default 16 (channels per group). The Gram matrix and the whitening product cost
      ``O(m·C·g)`` and dominate. Measured side by side with ``python run_episode.py bench norms`` (Conv-4
      ProtoNet training step, channels_last; shared machine, so read the ratios): with SWBN at g = 8/16/32/64 a
      step took 346/332/362/385 ms (Omniglot 60-way) and 785/772/773/870 ms (miniImageNet 5-way) of CPU time on
      one thread, so below 16 nothing is saved (the batched products lose efficiency). On two threads, SWBN at
      g = 16 costs 1.27× (Omniglot) and 1.41× (miniImageNet) a step with torch's fused ``BatchNorm2d``, and
      0.59×/0.69× one with fewshot's primitive-op ``batchnorm``. At the same g the layers themselves are much
      cheaper than IterNorm and DBN (miniImageNet shapes, g = 16: 373 vs 728 and 703 ms; g = 64: 473 vs 1216 and
      1211 ms), because SWBN never differentiates through the covariance. Small groups also suit tiny supports
      (norms-spec §10.5). ``results/bench_norms.csv`` holds the current numbers.
    * ``eps`` 1e-5 and ``momentum`` 0.1 as in BN (the re-implementation's 1e-8 is fragile in low precision), and
      ``running_var`` stores the unbiased variance like BN, so ``alpha=0`` reproduces BN exactly in both modes.
    * ``W`` is symmetrized after every step (ZCA-type whitening; avoids rotation drift).
    * ``tau`` 1e-12 only guards the Fro step's 0/0 at an exact fixed point; it never binds otherwise.
    * ``shrinkage`` ``ρ`` (default 0, the specification's rule): the update uses ``(1 − ρ) R_B + ρ I``
      (:func:`~fewshot.norms.whitening_math.shrink_to_identity`) in place of ``R_B``. Why it exists: where the
      channels of a group span fewer dimensions than ``g``, ``R_B`` is singular in every batch and the KL step
      grows ``W`` along the null directions (``w ← (1 + α) w`` per update at eigenvalue 0) until the small drift
      of those directions between batches balances it, far above any whitening of the signal. This
      happens in the first layer of Conv-4 on grey images: 64 filters of one 3×3 input channel are linear maps of
      a 9-dimensional patch, so each 16-channel group has rank ≤ 9. Measured in the MAML run of
      ``results/runs/maml_omniglot_vinyals_5w1s/`` (SWBN, ρ = 0): after 9,056 updates the 7 largest eigenvalues
      of every first-layer ``W`` were 15–55, their eigenvectors 81–99% inside the null space of the conv map,
      and as the filters move, those directions pick up signal. With ``ρ > 0`` the fixed point is
      ``R_ρ^{-1/2}``, whose eigenvalues are at most ``1/√ρ`` (3.2 for ``ρ = 0.1``). With any ``ρ`` the
      eigenvalues of ``W`` are capped at ``1/√eps`` (316 for eps = 1e-5, those of the exact whitening of
      ``R + eps·I``), so ``W`` stays finite on rank-deficient batches; trained layers stay far below the cap.

    The learning-rate schedule: the authors reportedly keep ``α / lr`` constant. Call
    :func:`scale_whitening_rate` (or :meth:`set_whitening_rate`) with ``lr_now / lr_initial`` whenever the
    schedule changes the learning rate; the factor is a plain attribute (not saved in the state dict), so a
    resumed trainer must set it again.

    Args:
        num_features, eps, momentum, affine, track_running_stats, policy, device, dtype: see
            :class:`~fewshot.norms.base.NormLayer`.
        group_size: channels per group ``g`` (default 16; larger than ``num_features`` → one group; see
            :func:`~fewshot.norms.whitening_math.resolve_group_size`).
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
    hparams = ("group_size", "alpha", "criterion", "tau", "shrinkage")

    def _init_layer(
        self,
        factory_kwargs: dict[str, Any],
        *,
        group_size: int | None = None,
        alpha: float = DEFAULT_ALPHA,
        criterion: str = "kl",
        tau: float = 1e-12,
        shrinkage: float = 0.0,
    ) -> None:
        name = type(self).__name__
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
                "transductive SWBN that still learns W use policy='batch' with track_running_stats=True",
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

    # ----------------------------------------------------------------- math hooks
    def _batch_stats(self, x: Tensor) -> SWBNStats:
        if not self._updates_state():  # R_B is needed only for the W update
            return SWBNStats(*WM.channel_moments(x), None)
        mean, var, cov = WM.channel_moments_and_covariance(x, self.group_size)
        return SWBNStats(mean, var, WM.correlation(cov, torch.rsqrt(var.detach() + self.eps)))

    def _running_stats(self) -> SWBNStats:
        return SWBNStats(self.running_mean, self.running_var, None)

    def _update_state(self, stats: SWBNStats, x: Tensor) -> None:
        factor = self._ema_factor()
        unbiased_var = FN.unbias_variance(stats.var, FN.samples_per_channel(x))
        self.running_mean.copy_(FN.ema(self.running_mean, stats.mean, factor))
        self.running_var.copy_(FN.ema(self.running_var, unbiased_var, factor))
        alpha = self.whitening_rate
        if alpha > 0:
            corr = WM.shrink_to_identity(stats.corr, self.shrinkage)
            w = WM.swbn_step(self.whitening_matrix, corr, alpha, self.criterion, self.tau)
            self.whitening_matrix.copy_(_cap_spectrum(w, math.inf if self.eps == 0 else self.eps**-0.5))

    def _current_w(self, x: Tensor) -> Tensor:
        """``W`` (G, g, g) for this forward: a copy of the buffer, or ``I`` when the layer keeps no state."""
        g = self.group_size
        if self.whitening_matrix is None:  # no state: plain BN with batch statistics
            return torch.eye(g, dtype=x.dtype, device=x.device).expand(self.groups, g, g)
        # A copy: the buffer is updated in place by later training forwards that share this graph.
        return self.whitening_matrix.clone()

    def _whiten(self, x: Tensor, stats: SWBNStats, weight: Tensor | None, bias: Tensor | None) -> Tensor:
        """``weight ⊙ W diag(rstd)(x − μ) + bias`` as one grouped 1×1 product with a folded bias."""
        g = self.group_size
        rstd = torch.rsqrt(stats.var + self.eps).reshape(self.groups, 1, g)
        matrix = self._current_w(x) * rstd
        if weight is not None:
            matrix = matrix * weight.reshape(self.groups, g, 1)
        shift = -(matrix @ stats.mean.reshape(self.groups, g, 1)).reshape(-1)
        if bias is not None:
            shift = shift + bias
        return WM.apply_group_matrix(x, matrix, shift)

    def _normalize(self, x: Tensor, stats: SWBNStats) -> Tensor:
        return self._whiten(x, stats, None, None)

    def forward(self, x: Tensor) -> Tensor:
        """Normalize and whiten ``x`` (N, C) or (N, C, H, W); returns the same shape.

        Same flow as :meth:`NormLayer.forward` with the per-channel affine folded into the whitening product
        (one pass over ``x`` instead of two).
        """
        self._check_input_dim(x)
        if (
            self._stats_source() == "batch"
            and self.policy != "support"
            and fused_kernels_allowed(x, self.weight, self.bias)
        ):
            return self._fused_batch_forward(x)
        stats = self._select_stats(x)
        return self._whiten(x, stats, self.weight, self.bias)

    def _fused_batch_forward(self, x: Tensor) -> Tensor:
        """Batch-statistics forward on torch's fused batch-norm kernel: ``weight ⊙ W x̂ + bias``, ``x̂`` = BN(x).

        The same function as :meth:`_whiten` with batch statistics (``W diag(rstd)(x − μ) = W x̂``), used where
        :func:`~fewshot.norms.kernels.fused_kernels_allowed` (the kernel's first and second derivatives are
        exact there) and nothing caches the statistics (not the ``support`` policy). ``R_B`` for the W update is
        the group second moment of ``x̂`` (equal to :func:`~fewshot.norms.whitening_math.correlation` of the
        centred covariance), computed without autograd and only when the state is updated; the update runs in
        :meth:`_select_stats` before ``W`` is read, as on the exact path.
        """
        self._check_batch_size(x)  # our message, before the kernel raises its own
        with torch.no_grad():  # the backward is standardize_then_group_matrix's closed form
            x_hat, mean, invstd = torch.native_batch_norm(x, None, None, None, None, True, 0.0, self.eps)
        var = (invstd.double().pow(-2) - self.eps).clamp_min(0).to(invstd.dtype)
        corr = WM.group_second_moment(x_hat, self.group_size) if self._updates_state() else None
        self._select_stats(x, SWBNStats(mean, var, corr))
        return standardize_then_group_matrix(x, x_hat, invstd, self._current_w(x), self.weight, self.bias, self.eps)


def _cap_spectrum(w: Tensor, cap: float) -> Tensor:
    """Symmetric ``w`` (..., g, g) with its eigenvalues clamped to ``[-cap, cap]``; ``w`` itself where none exceeds.

    SWBN's bound on ``W`` (``cap = 1/sqrt(eps)``): the exact whitening matrix of ``R + eps·I`` has eigenvalues
    ``(λ + eps)^{-1/2} ≤ 1/sqrt(eps)`` (316 for eps = 1e-5), so a ``W`` beyond it whitens nothing real. Without
    the cap, with ``shrinkage = 0`` on rank-deficient batches, ``W`` grows like ``(1 + α)^t`` along the null
    directions until it overflows. Trained layers stay far below it (largest singular values 9.6–55 in
    ``results/swbn_spectrum.csv`` and the MAML run), so it never binds in normal training, and below it ``W``
    is returned bit for bit (the Frobenius norm, an upper bound of the spectral norm, is checked first).
    """
    if not bool((torch.linalg.matrix_norm(w) > cap).any()) or not bool(torch.isfinite(w).all()):
        return w  # within the cap, or non-finite (then the base class restores the previous state)
    vals, vecs = torch.linalg.eigh(w)
    capped = (vecs * vals.clamp(-cap, cap).unsqueeze(-2)) @ vecs.mT
    return torch.where((vals.abs().amax(-1) > cap)[..., None, None], capped, w)


def scale_whitening_rate(model: nn.Module, factor: float) -> int:
    """Set every SWBN layer in ``model`` to whitening rate ``alpha · factor``.

    Call it with ``factor = lr_now / lr_initial`` whenever the learning-rate schedule changes the rate, to keep
    ``α / lr`` constant as the SWBN authors reportedly advise.

    Args:
        model: any module; SWBN layers are found in ``model.modules()``.
        factor: a finite number ``≥ 0``.

    Returns:
        The number of SWBN layers changed.

    Example:
        >>> model = nn.Sequential(nn.Conv2d(3, 8, 3), SWBN(8))
        >>> scale_whitening_rate(model, 0.1)
        1
    """
    layers = [m for m in model.modules() if isinstance(m, SWBN)]
    for layer in layers:
        layer.set_whitening_rate(factor)
    return len(layers)
