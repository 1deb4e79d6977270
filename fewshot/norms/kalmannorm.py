"""Batch Kalman Normalization (``kalmannorm``) and the moment propagation it uses between layers.

Pure functions (:func:`rectified_gaussian_moments`, :func:`propagate_moments`, :func:`kalman_fuse`) carry the
math; :class:`KalmanNorm` is the layer. Backbones thread the state: for each conv → norm pair they call
``prior = norm.predict(previous_posterior, conv)`` and ``y, posterior = norm.forward_with_state(h, prior)``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from fewshot.norms import functional as FN
from fewshot.norms import whitening_math as WM
from fewshot.norms.base import NormLayer
from fewshot.norms.flow import current_flow
from fewshot.norms.functional import Moments
from fewshot.norms.registry import NORM_LAYERS
from fewshot.norms.sufficient import count_of, merge_moments

__all__ = ["KalmanNorm", "KalmanStats", "kalman_fuse", "propagate_moments", "rectified_gaussian_moments"]

DEFAULT_P_RATE = 0.5
DEFAULT_GUARD_RATIO = 100.0


class KalmanStats(NamedTuple):
    """The normalizer of one forward (``mean``, ``var``, ``(C,)``) and the observed batch moments behind it.

    ``count``: values per channel of the batch (float64 0-dim; 0 for statistics read from the state).
    """

    count: Tensor
    mean: Tensor
    var: Tensor
    obs_mean: Tensor
    obs_var: Tensor


def rectified_gaussian_moments(mean: Tensor, var: Tensor) -> Moments:
    """Mean and variance of ``ReLU(z)`` for ``z ~ N(mean, var)``, elementwise, in closed form.

    With ``s = sqrt(var)``, ``a = mean/s``, ``Φ``/``φ`` the standard normal cdf/pdf:
    ``E[ReLU z] = mean Φ(a) + s φ(a)`` and ``E[(ReLU z)²] = (mean² + var) Φ(a) + mean s φ(a)``. A zero
    variance gives ``ReLU(mean)`` and 0 (the variance is floored at 1e-12 inside ``a``).

    Args:
        mean: any shape.
        var: same shape, ``≥ 0``.

    Returns:
        ``Moments(mean, var)`` of the same shape.
    """
    std = var.clamp_min(1e-12).sqrt()
    a = mean / std
    cdf = 0.5 * (1.0 + torch.erf(a / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * a * a) / math.sqrt(2.0 * math.pi)
    first = mean * cdf + std * pdf
    second = (mean * mean + var) * cdf + mean * std * pdf
    return Moments(first, (second - first * first).clamp_min(0.0))


def propagate_moments(mean: Tensor, var: Tensor, layer: nn.Module) -> Moments:
    """Per-channel moments of ``layer(x)`` when the input channels are independent with the given moments.

    ``μ_out = Σ_{i,taps} W_{o,i,tap} μ_i + b_o`` and ``σ²_out = Σ_{i,taps} W²_{o,i,tap} σ²_i``: every input value
    under a kernel tap is treated as an independent draw of its channel's distribution. This ignores the
    spatial correlation of neighbouring pixels and the zero padding at the borders.

    Args:
        mean: ``(C_in,)``.
        var: ``(C_in,)``.
        layer: ``nn.Conv2d`` (``groups=1``) or ``nn.Linear``.

    Returns:
        ``Moments(mean (C_out,), var (C_out,))``, differentiable w.r.t. the layer's weight and bias.
    """
    if isinstance(layer, nn.Conv2d):
        if layer.groups != 1:
            raise ValueError(f"propagate_moments supports nn.Conv2d with groups=1, got groups={layer.groups}")
        weight = layer.weight.flatten(2)  # (C_out, C_in, taps)
        w_sum, w_sq = weight.sum(dim=2), (weight * weight).sum(dim=2)
    elif isinstance(layer, nn.Linear):
        w_sum, w_sq = layer.weight, layer.weight * layer.weight
    else:
        raise TypeError(
            f"propagate_moments expects nn.Conv2d or nn.Linear (the layer between two Kalman norms), got "
            f"{type(layer).__name__}"
        )
    if w_sum.shape[1] != mean.shape[0]:
        raise ValueError(
            f"{type(layer).__name__} takes {w_sum.shape[1]} input channels but the posterior has {mean.shape[0]}"
        )
    out_mean = w_sum @ mean
    if layer.bias is not None:
        out_mean = out_mean + layer.bias
    return Moments(out_mean, w_sq @ var)


def kalman_fuse(observed: Moments, predicted: Moments, p_rate: float, guard_ratio: float, eps: float) -> Moments:
    """Batch Kalman Normalization's update: pool the observed batch moments with the predicted ones.

    ``μ̂ = p μ_pred + (1 − p) μ_obs`` and ``σ̂² = p σ²_pred + (1 − p) σ²_obs + p(1 − p)(μ_obs − μ_pred)²`` (the mean
    and variance of the mixture ``p·N(μ_pred, σ²_pred) + (1 − p)·N(μ_obs, σ²_obs)``), per channel. Guard: if
    ``mean_c(σ²_pred / (σ²_obs + eps)) ≥ guard_ratio`` the prediction is discarded and the observed moments
    are returned (``torch.where``, no Python branch on values).

    Args:
        observed: ``Moments((C,), (C,))`` of the batch.
        predicted: ``Moments((C,), (C,))`` from the previous layer.
        p_rate: weight ``p`` of the prediction, in ``[0, 1]``.
        guard_ratio: threshold of the mean variance ratio.
        eps: added to the observed variance in the ratio.

    Returns:
        ``Moments((C,), (C,))``.
    """
    p = p_rate
    mean = p * predicted.mean + (1 - p) * observed.mean
    diff = observed.mean - predicted.mean
    var = p * predicted.var + (1 - p) * observed.var + p * (1 - p) * diff * diff
    trusted = (predicted.var / (observed.var + eps)).mean() < guard_ratio
    return Moments(torch.where(trusted, mean, observed.mean), torch.where(trusted, var, observed.var))


@NORM_LAYERS.register("kalmannorm")
class KalmanNorm(NormLayer):
    """Batch Kalman Normalization: BN whose statistics also use a prediction from the previous layer.

    Wang, Peng, Luo, Wang, Lin, "Batch Kalman Normalization: Towards Training Deep Neural Networks with
    Micro-Batches", arXiv 1802.03133 (NeurIPS 2018 as "Kalman Normalization"). Follows the official code's
    per-channel form (norms-spec §7): the observed batch moments are pooled with moments predicted from
    the previous norm layer (:func:`kalman_fuse`), and ``y = γ (x − μ̂)/sqrt(σ̂² + eps) + β``.

    State passing (``passes_state = True``): ``forward_with_state(x, prior) -> (y, posterior)``, where the
    posterior is the per-channel ``(mean, var)`` of this layer's output ``y`` (after the affine, before the
    nonlinearity), exact from the observed moments: ``mean = γ(μ_obs − μ̂)/sqrt(σ̂² + eps) + β``,
    ``var = γ² σ²_obs/(σ̂² + eps)``. ``predict(posterior, conv)`` gives the next layer's prior analytically:
    rectified-Gaussian moments for the ReLU (:func:`rectified_gaussian_moments`, closed form with erf) and then
    :func:`propagate_moments` through ``conv``. Max-pooling between the ReLU and the conv is ignored (it raises
    the mean and lowers the variance of what the conv sees), and so are spatial correlations and border
    padding; the official code instead pushes Gaussian noise through the same layers (Monte Carlo). Gradients
    flow through the prediction into the conv weights. ``prior=None`` (the first layer) gives plain BN, and so
    does plain ``forward(x)``, so the layer also works as a drop-in ``nn.Module``.

    Choices: ``p_rate`` default 0.5 — the official code uses 0.9 for 2-sample micro-batches and 0.05 for
    128-sample batches; few-shot batches sit in between (5–25 support images carry the task's statistics), and
    since our analytic prediction is biased by the approximations above it should not dominate. The guard
    (``guard_ratio`` 100 as in the code) falls back to BN when the prediction is far off. Running statistics are
    EMAs (``momentum``) of the *filtered* moments, storing the unbiased variance like BN; eval mode is BN with
    them (the prior is then ignored). ``p_rate = 0`` is exactly BN in every mode.

    Args:
        num_features, eps, momentum, affine, track_running_stats, policy, device, dtype: see
            :class:`~fewshot.norms.base.NormLayer`.
        p_rate: weight ``p ∈ [0, 1]`` of the prediction.
        guard_ratio: discard the prediction when ``mean(σ²_pred/σ²_obs) ≥ guard_ratio``.

    Shape:
        input ``(N, C)`` or ``(N, C, H, W)``; output the same; posterior and prior are
        :class:`~fewshot.norms.functional.Moments` of ``(C,)`` tensors.

    Example:
        >>> conv1, conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1)
        >>> kn1, kn2 = KalmanNorm(8), KalmanNorm(8)
        >>> y1, post = kn1.forward_with_state(conv1(torch.randn(4, 3, 6, 6)), None)
        >>> y2, _ = kn2.forward_with_state(conv2(torch.relu(y1)), kn2.predict(post, conv2))
        >>> y2.shape
        torch.Size([4, 8, 6, 6])
    """

    passes_state = True
    state_buffers = ("running_mean", "running_var")
    hparams = ("p_rate", "guard_ratio")

    def _init_layer(
        self,
        factory_kwargs: dict[str, Any],
        *,
        p_rate: float = DEFAULT_P_RATE,
        guard_ratio: float = DEFAULT_GUARD_RATIO,
    ) -> None:
        name = type(self).__name__
        if isinstance(p_rate, bool) or not isinstance(p_rate, (int, float)) or not 0.0 <= p_rate <= 1.0:
            raise ValueError(f"{name}: p_rate must be a number in [0, 1], got {p_rate!r}")
        if isinstance(guard_ratio, bool) or not isinstance(guard_ratio, (int, float)) or not guard_ratio > 0:
            raise ValueError(f"{name}: guard_ratio must be a number > 0, got {guard_ratio!r}")
        self.p_rate = float(p_rate)
        self.guard_ratio = float(guard_ratio)
        self._prior: Moments | None = None

    def _make_state(self, factory_kwargs: dict[str, Any]) -> dict[str, Tensor]:
        return {
            "running_mean": torch.zeros(self.num_features, **factory_kwargs),
            "running_var": torch.ones(self.num_features, **factory_kwargs),
        }

    def _batch_stats(self, x: Tensor) -> KalmanStats:
        observed = Moments(*WM.channel_moments(x))
        estimate = observed
        if self._prior is not None and self.p_rate > 0:
            estimate = kalman_fuse(observed, self._prior, self.p_rate, self.guard_ratio, self.eps)
        return KalmanStats(count_of(x), estimate.mean, estimate.var, observed.mean, observed.var)

    def _running_stats(self, state: dict[str, Tensor]) -> KalmanStats:
        mean, var = state["running_mean"], state["running_var"]
        return KalmanStats(state["num_batches_tracked"].new_zeros((), dtype=torch.float64), mean, var, mean, var)

    def _merge_stats(self, parts: list[KalmanStats]) -> KalmanStats:
        """The filtered and the observed moments each merged as moments of the union (Chan's rule)."""
        count, mean, var = merge_moments([(p.count, p.mean, p.var) for p in parts])
        _, obs_mean, obs_var = merge_moments([(p.count, p.obs_mean, p.obs_var) for p in parts])
        return KalmanStats(count, mean, var, obs_mean, obs_var)

    def _next_state(self, state: dict[str, Tensor], stats: KalmanStats, factor: float | Tensor) -> dict[str, Tensor]:
        unbiased_var = FN.unbias_variance(stats.var, stats.count)
        return {
            "running_mean": FN.ema(state["running_mean"], stats.mean, factor),
            "running_var": FN.ema(state["running_var"], unbiased_var, factor),
        }

    def _normalize(self, x: Tensor, stats: KalmanStats) -> Tensor:
        return FN.standardize(x, FN.per_channel(stats.mean, x), FN.per_channel(stats.var, x), self.eps)

    def forward_with_state(self, x: Tensor, prior: Moments | tuple[Tensor, Tensor] | None) -> tuple[Tensor, Moments]:
        """Normalize ``x`` with the prior-filtered statistics and return the output's moments.

        Args:
            x: ``(N, C)`` or ``(N, C, H, W)``.
            prior: predicted ``(mean (C,), var (C,))`` of ``x``'s channels (from :meth:`predict`), or ``None``.

        Returns:
            ``(y, posterior)``: ``y`` like ``x``; ``posterior = Moments(mean (C,), var (C,))`` of ``y``.
        """
        self._check_input_dim(x)
        if prior is not None:
            prior = Moments(*prior)
            if prior.mean.shape != (self.num_features,) or prior.var.shape != (self.num_features,):
                raise ValueError(
                    f"{type(self).__name__}: prior must hold two ({self.num_features},) tensors, got shapes "
                    f"{tuple(prior.mean.shape)} and {tuple(prior.var.shape)}"
                )
        flow = current_flow()
        source = self._source(flow)
        if source == "own":
            self._check_batch_size(x)
            self._prior = prior
            try:
                stats = self._batch_stats(x)
            finally:
                self._prior = None
            self._observe(stats, flow)
        else:  # the normalizer is not from x: observe x for the posterior
            stats = flow.given(self) if source == "given" else self.state_stats(self.state())
            obs_mean, obs_var = WM.channel_moments(x)
            stats = stats._replace(obs_mean=obs_mean, obs_var=obs_var)
        rstd = torch.rsqrt(stats.var + self.eps)
        y = FN.affine(self._normalize(x, stats), self.weight, self.bias)
        scale = rstd if self.weight is None else self.weight * rstd
        mean = scale * (stats.obs_mean - stats.mean)
        if self.bias is not None:
            mean = mean + self.bias
        return y, Moments(mean, scale * scale * stats.obs_var)

    def predict(self, posterior: Moments | tuple[Tensor, Tensor], conv: nn.Module) -> Moments:
        """The prior for this layer's input from the previous layer's posterior, through ReLU and ``conv``.

        Args:
            posterior: ``(mean (C_prev,), var (C_prev,))`` of the previous norm layer's output.
            conv: the ``nn.Conv2d`` / ``nn.Linear`` producing this layer's input.

        Returns:
            ``Moments(mean (C,), var (C,))``.
        """
        rectified = rectified_gaussian_moments(*posterior)
        return propagate_moments(rectified.mean, rectified.var, conv)
