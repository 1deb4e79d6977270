"""``NormLayer``: the base class of every normalization layer in fewshot.

The base class owns everything layers have in common: the uniform constructor, the affine parameters, the
running-state buffers and their reset, the statistics policy (``running`` / ``batch`` / ``support``), the task
phase and the support-statistics cache, the single switch for state updates, input checks, ``extra_repr`` and
loading a torch BatchNorm's state. A layer implements only its math, in a few small hooks.

How to write a layer
--------------------
1. Subclass :class:`NormLayer`, register it with ``@NORM_LAYERS.register("name")`` (from
   ``fewshot.norms.registry``) and import the module in ``fewshot/norms/__init__.py``.
2. Layer-specific options go in ``_init_layer(self, factory_kwargs, *, groups=16, ...)`` (keyword-only, with
   defaults). It runs inside the base constructor after the common attributes (``num_features``, ``eps``,
   ``momentum``, ``affine``, ``policy``) are set and before the state buffers are made, so ``_make_state`` can
   read the options. Validate there, store plain Python values on ``self``, create extra Parameters with
   ``**factory_kwargs`` and list the option names in the class attribute ``hparams`` (they are printed by
   ``extra_repr``). Do not override ``__init__``: every layer has the constructor
   ``(num_features, *, eps, momentum, affine, track_running_stats, policy, device, dtype, **options)`` and
   unknown options raise a TypeError listing the accepted ones.
3. Running state: set ``state_buffers = ("running_mean", "running_cov", ...)`` and implement
   ``_make_state(factory_kwargs) -> {name: initial tensor}``. The base registers them (or registers ``None``
   for each when ``track_running_stats=False``), adds the long ``num_batches_tracked`` buffer, and
   ``reset_running_stats()`` copies fresh ``_make_state`` values back. A layer with no state leaves
   ``state_buffers = ()``; it then reports ``track_running_stats=False``.
4. Math hooks ("stats" is any tuple / NamedTuple of tensors and Python numbers, e.g.
   :class:`fewshot.norms.functional.Moments`):

   * ``_batch_stats(x) -> stats``: differentiable statistics of the current batch ``x`` (N, C[, H, W]).
   * ``_running_stats() -> stats``: the same structure read from the running buffers (eval, running policy).
   * ``_normalize(x, stats) -> x_hat``: the normalized (and whitened) ``x`` before the per-channel affine.
   * ``_update_state(stats, x)``: write new running state into the buffers with ``buffer.copy_(...)``. The base
     calls it under ``torch.no_grad()`` with detached ``stats`` and ``x``, right after ``_batch_stats`` and after
     incrementing ``num_batches_tracked``, and only when ``self.training and self.update_stats and
     self.track_running_stats``. Use ``self._ema_factor()`` (momentum, or ``1/num_batches_tracked`` when
     ``momentum=None``) and :func:`fewshot.norms.functional.ema`. Never update state anywhere else: the base
     (:meth:`NormLayer._apply_update`) skips an update whose batch statistics or resulting state hold a NaN or an
     infinity, keeps the previous state and warns once per layer, so one bad batch never poisons the state. That
     check reads tensor values, so state updates run in plain forwards (as MAML's separate no-grad update pass
     does), never under ``vmap``.

   Write the math from primitive ops (mean, matmul, cholesky, solve_triangular, Newton–Schulz), never
   ``F.batch_norm``; keep it vmap-legal (no ``.item()``, no value-dependent branches, ``new_*`` factories).
   A fused kernel may be added *beside* this exact path, used only where
   :func:`fewshot.norms.kernels.fused_kernels_allowed` says so and only where its semantics are identical
   (see ``BatchNorm.forward``); it hands its statistics to ``_select_stats(x, batch_stats)``.
   A layer that overrides ``forward`` (e.g. to fold the affine into its whitening matrix) starts with
   ``self._check_input_dim(x)`` and ``stats = self._select_stats(x)``: the latter makes the policy decision,
   checks the batch size, fills the support cache and calls ``_update_state``.
5. Class flags: ``per_sample = True`` for layers without batch dependence (the base then always calls
   ``_batch_stats`` on the input itself, ignores the policy and skips the batch-size check);
   ``passes_state = True`` for layers that also provide ``forward_with_state(x, prior) -> (y, posterior)`` and
   ``predict(posterior, conv) -> prior`` (plain ``forward(x)`` must still work on its own);
   ``reproduces_bn_after_convert = False`` when an eval-mode layer cannot reproduce a BatchNorm's output after
   :func:`fewshot.norms.convert` (per-sample layers, batch-statistics-only layers); ``fixed_policy`` when the
   policy is part of the layer's definition (``batchnorm_transductive``: ``"batch"``).
6. Override ``_load_running_moments(mean, var)`` (called under no_grad; the base copies
   ``num_batches_tracked``) if your state is not ``running_mean``/``running_var`` (e.g. a whitening layer seeds
   a diagonal covariance from BN's ``running_var``), so that an eval-mode layer reproduces the BatchNorm it was
   converted from by :func:`fewshot.norms.convert`.

Statistics policy (``layer.policy``; see docs/ARCHITECTURE.md)
---------------------------------------------------------------
* ``running``: batch statistics in train mode (and running state updated), running state in eval mode; batch
  statistics in both modes when ``track_running_stats=False`` (PyTorch semantics).
* ``batch``: always the current batch's statistics (transductive); the running state is never read.
* ``support``: inside ``task_phase(model, "support")`` a forward computes batch statistics and caches them on
  the layer (a transient attribute, not a buffer, keeping the autograd graph; the cache holds the statistics of
  the *last* support forward); inside ``task_phase(model, "query")`` the cached statistics are applied, frozen,
  to the query batch. Outside any phase, or in a query phase with nothing cached, a forward raises. Inside a
  ``torch.func`` transform the cache holds that transform's tensors: run the support forward whose statistics
  the query uses at the same transform level as the query forward.

In train mode the running state is updated from every batch-statistics forward (any policy; under ``support``
only from support-phase forwards, never from a query), unless updates are switched off with
``frozen_stats(model)`` or ``layer.update_stats = False``.
"""

from __future__ import annotations

import inspect
import math
import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fewshot.norms import functional as FN
from fewshot.norms.fp32 import fp32_forward

__all__ = ["NormLayer", "POLICIES", "PHASES"]

POLICIES: tuple[str, ...] = ("running", "batch", "support")
PHASES: tuple[str, ...] = ("support", "query")
_COMMON_OPTIONS = ("eps", "momentum", "affine", "track_running_stats", "policy", "device", "dtype")


def _tensors(stats: Any) -> list[Tensor]:
    """Every tensor in a (nested) tuple / NamedTuple / list / dict of statistics."""
    if isinstance(stats, Tensor):
        return [stats]
    if isinstance(stats, (tuple, list)):
        return [t for s in stats for t in _tensors(s)]
    if isinstance(stats, dict):
        return [t for s in stats.values() for t in _tensors(s)]
    return []


def _all_finite(tensors: list[Tensor]) -> bool:
    floats = [t for t in tensors if t.is_floating_point() or t.is_complex()]
    return not floats or bool(torch.stack([torch.isfinite(t).all() for t in floats]).all())


def _detach(stats: Any) -> Any:
    """Detach every tensor in a (nested) tuple / NamedTuple / list / dict of statistics."""
    if isinstance(stats, Tensor):
        return stats.detach()
    if isinstance(stats, tuple) and hasattr(stats, "_fields"):
        return type(stats)(*(_detach(s) for s in stats))
    if isinstance(stats, (tuple, list)):
        return type(stats)(_detach(s) for s in stats)
    if isinstance(stats, dict):
        return {k: _detach(v) for k, v in stats.items()}
    return stats


class NormLayer(nn.Module):
    """Base class of fewshot's normalization layers (see the module docstring for how to write one).

    Args:
        num_features: channel count ``C`` of the ``(N, C)`` or ``(N, C, H, W)`` input.
        eps: added to variances (or ``eps·I`` to covariances) before inverting.
        momentum: running-average factor ``p`` in ``r ← (1 − p)·r + p·batch``; ``None`` gives a cumulative
            average over ``num_batches_tracked`` batches. Not an optimizer momentum.
        affine: learn a per-channel scale ``weight`` (ones) and shift ``bias`` (zeros); else both are ``None``.
        track_running_stats: keep running state buffers; else they are ``None`` and batch statistics are used
            in eval mode too.
        policy: where statistics come from: ``"running"``, ``"batch"`` or ``"support"`` (module docstring);
            ``None`` means ``"running"``, or the layer's ``fixed_policy`` if it has one.
        device: device of the parameters and buffers.
        dtype: floating dtype of the parameters and buffers (``num_batches_tracked`` is always long).
        **options: layer-specific options (see each layer's docstring).

    Example:
        >>> from fewshot.norms import create
        >>> layer = create("groupnorm", 6, groups=4)  # a NormLayer subclass; groups resolves to 3
        >>> isinstance(layer, NormLayer), layer.groups, layer.per_sample
        (True, 3, True)
    """

    _version: ClassVar[int] = 1
    passes_state: ClassVar[bool] = False
    per_sample: ClassVar[bool] = False
    reproduces_bn_after_convert: ClassVar[bool] = True
    fixed_policy: ClassVar[str | None] = None
    state_buffers: ClassVar[tuple[str, ...]] = ()
    hparams: ClassVar[tuple[str, ...]] = ()

    def __init__(
        self,
        num_features: int,
        *,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        policy: str | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **options: Any,
    ) -> None:
        super().__init__()
        name = type(self).__name__
        if isinstance(num_features, bool) or not isinstance(num_features, int) or num_features < 1:
            raise ValueError(f"{name}: num_features must be a positive int (the channel count), got {num_features!r}")
        if not (isinstance(eps, (int, float)) and math.isfinite(eps) and eps >= 0):
            raise ValueError(f"{name}: eps must be a finite number >= 0, got {eps!r}")
        if momentum is not None and not (isinstance(momentum, (int, float)) and 0.0 <= momentum <= 1.0):
            raise ValueError(f"{name}: momentum must be in [0, 1] or None (cumulative average), got {momentum!r}")
        accepted = self.layer_options()
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise TypeError(
                f"{name} got unknown option(s) {', '.join(repr(u) for u in unknown)}; accepted options: "
                f"{', '.join((*_COMMON_OPTIONS, *accepted))}"
            )
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats) and bool(self.state_buffers)
        self.update_stats = True
        self._policy = self._validate_policy(policy if policy is not None else self.fixed_policy or "running")
        self._phase: str | None = None
        self._support_stats: Any = None
        self.label: str | None = None  # the layer's name in its model, for messages (the trainer sets it)
        self.skipped_updates = 0  # state updates skipped because of non-finite values
        self._init_layer(factory_kwargs, **options)

        if self.affine:
            self.weight = nn.Parameter(torch.empty(num_features, **factory_kwargs))
            self.bias = nn.Parameter(torch.empty(num_features, **factory_kwargs))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)
        if self.track_running_stats:
            state = self._make_state(factory_kwargs)
            if set(state) != set(self.state_buffers):
                raise TypeError(
                    f"{name}._make_state returned buffers {sorted(state)} but state_buffers declares "
                    f"{sorted(self.state_buffers)}; make them agree"
                )
            for key in self.state_buffers:
                self.register_buffer(key, state[key])
            self.register_buffer(
                "num_batches_tracked",
                torch.tensor(0, dtype=torch.long, **{k: v for k, v in factory_kwargs.items() if k != "dtype"}),
            )
        else:
            for key in self.state_buffers:
                self.register_buffer(key, None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    # ----------------------------------------------------------------- hooks for subclasses
    def _init_layer(self, factory_kwargs: dict[str, Any]) -> None:
        """Store and validate layer-specific keyword-only options (override with your options)."""

    def _make_state(self, factory_kwargs: dict[str, Any]) -> dict[str, Tensor]:
        """Fresh running-state tensors, one per name in ``state_buffers``."""
        return {}

    def _batch_stats(self, x: Tensor) -> Any:
        """Differentiable statistics of the batch ``x`` (N, C[, H, W])."""
        raise NotImplementedError(f"{type(self).__name__} must implement _batch_stats(x)")

    def _running_stats(self) -> Any:
        """Statistics read from the running buffers, with the structure ``_batch_stats`` returns."""
        raise NotImplementedError(f"{type(self).__name__} keeps no running state to normalize with")

    def _normalize(self, x: Tensor, stats: Any) -> Tensor:
        """Normalize ``x`` (N, C[, H, W]) with ``stats``; returns ``x_hat`` of the same shape, before the affine."""
        raise NotImplementedError(f"{type(self).__name__} must implement _normalize(x, stats)")

    def _update_state(self, stats: Any, x: Tensor) -> None:
        """Write new running state from detached batch ``stats`` and input ``x`` (called under no_grad)."""
        raise NotImplementedError(f"{type(self).__name__} declares state_buffers but no _update_state")

    def _load_running_moments(self, mean: Tensor, var: Tensor) -> None:
        """Seed the running state from a BatchNorm's per-channel running mean and (unbiased) variance (C,)."""
        if not self.state_buffers:
            return
        if set(self.state_buffers) != {"running_mean", "running_var"}:
            raise NotImplementedError(
                f"{type(self).__name__} keeps state {self.state_buffers}; override _load_running_moments to seed "
                "it from a BatchNorm's running_mean and running_var"
            )
        self.running_mean.copy_(mean)
        self.running_var.copy_(var)

    # ----------------------------------------------------------------- construction helpers
    @classmethod
    def layer_options(cls) -> tuple[str, ...]:
        """Names of the layer-specific keyword options (the keyword-only parameters of ``_init_layer``)."""
        params = inspect.signature(cls._init_layer).parameters.values()
        return tuple(p.name for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY)

    def _validate_policy(self, policy: str) -> str:
        name = type(self).__name__
        if policy not in POLICIES:
            raise ValueError(f"{name}: policy must be one of {', '.join(map(repr, POLICIES))}, got {policy!r}")
        if self.fixed_policy is not None and policy != self.fixed_policy:
            raise ValueError(
                f"{name} always uses policy {self.fixed_policy!r} (it is part of the layer's definition), got "
                f"policy={policy!r}; pick another layer for policy {policy!r}"
            )
        return policy

    @property
    def policy(self) -> str:
        """Where statistics come from: ``"running"``, ``"batch"`` or ``"support"``."""
        return self._policy

    @policy.setter
    def policy(self, value: str) -> None:
        self._policy = self._validate_policy(value)

    @property
    def phase(self) -> str | None:
        """The current task phase (``"support"``, ``"query"`` or ``None``), set by ``task_phase``."""
        return self._phase

    def set_phase(self, phase: str | None) -> None:
        """Set the task phase (use :func:`fewshot.norms.task_phase`, which also manages the cache)."""
        if phase is not None and phase not in PHASES:
            raise ValueError(f"phase must be one of {', '.join(map(repr, PHASES))} or None, got {phase!r}")
        self._phase = phase

    @property
    def support_stats(self) -> Any:
        """Statistics cached by the last support-phase forward under the support policy, or ``None``."""
        return self._support_stats

    def clear_support_stats(self) -> None:
        """Drop the cached support statistics (and the autograd graph they hold)."""
        self._support_stats = None

    def reset_running_stats(self) -> None:
        """Reset the running state to ``_make_state`` values and ``num_batches_tracked`` to 0."""
        if not self.track_running_stats:
            return
        ref = getattr(self, self.state_buffers[0])
        fresh = self._make_state({"device": ref.device, "dtype": ref.dtype})
        with torch.no_grad():
            for key in self.state_buffers:
                getattr(self, key).copy_(fresh[key])
            self.num_batches_tracked.zero_()

    def reset_parameters(self) -> None:
        """Reset the running state and the affine parameters (weight ones, bias zeros)."""
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            nn.init.zeros_(self.bias)

    # ----------------------------------------------------------------- checks
    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected 2D (N, C) or 4D (N, C, H, W) input (got {x.dim()}D input)")
        if x.shape[1] != self.num_features:
            raise ValueError(
                f"{type(self).__name__} expected {self.num_features} channels in dim 1 (got input of shape "
                f"{tuple(x.shape)}); build the layer with num_features={x.shape[1]} or fix the preceding layer"
            )

    def _check_batch_size(self, x: Tensor) -> None:
        if x.shape[0] < 2:
            mode = "train" if self.training else "eval"
            raise ValueError(
                f"{type(self).__name__} (policy={self.policy!r}, {mode} mode) needs batch statistics but got a "
                f"batch of {x.shape[0]} sample (input shape {tuple(x.shape)}); batch statistics of one sample "
                "are not meaningful. Pass at least 2 samples, use policy='running' in eval mode, policy='support' "
                "to reuse support-set statistics, or a per-sample layer (e.g. groupnorm)"
            )

    # ----------------------------------------------------------------- forward
    def _ema_factor(self) -> float | Tensor:
        """The running-average factor: ``momentum``, or ``1/num_batches_tracked`` when ``momentum`` is None."""
        if self.momentum is not None:
            return self.momentum
        return 1.0 / self.num_batches_tracked.to(torch.float64)

    def _updates_state(self) -> bool:
        return self.training and self.update_stats and self.track_running_stats

    def _stats_source(self) -> str:
        """``"batch"``, ``"running"`` or ``"cached"``: where this forward's statistics come from."""
        if self.per_sample or self.policy == "batch":
            return "batch"
        if self.policy == "running":
            return "batch" if self.training or not self.track_running_stats else "running"
        if self._phase is None:
            raise RuntimeError(
                f"{type(self).__name__} has policy='support' but the forward ran outside a task phase; wrap the "
                "support forward in `with fewshot.norms.task_phase(model, 'support'):` and the query forward in "
                "`with fewshot.norms.task_phase(model, 'query'):`, or use set_policy(model, 'running'/'batch')"
            )
        return "batch" if self._phase == "support" else "cached"

    def _select_stats(self, x: Tensor, batch_stats: Any = None) -> Any:
        """This forward's statistics per the policy; fills the support cache and updates the state.

        ``batch_stats``: statistics of ``x`` already computed by a fused kernel (only where the source is the
        batch and nothing caches them); ``None`` computes them with ``_batch_stats``.
        """
        source = self._stats_source()
        if source == "running":
            return self._running_stats()
        if source == "cached":
            if self._support_stats is None:
                raise RuntimeError(
                    f"{type(self).__name__} (policy='support') got a query-phase forward but has no cached "
                    "support statistics; run the support set through the model inside task_phase(model, "
                    "'support') first, in the same task"
                )
            return self._support_stats
        if not self.per_sample:
            self._check_batch_size(x)
        stats = self._batch_stats(x) if batch_stats is None else batch_stats
        if self.policy == "support" and not self.per_sample:
            self._support_stats = stats
        if self._updates_state():
            with torch.no_grad():
                self._apply_update(_detach(stats), x.detach())
        return stats

    def _apply_update(self, stats: Any, x: Tensor) -> None:
        """The one place where running state changes: ``_update_state``, unless a value is non-finite.

        A NaN or infinity in the batch statistics skips the update; one in the state ``_update_state`` produced
        restores the previous state. Either way ``num_batches_tracked`` is unchanged, ``skipped_updates`` counts
        it, and the first skip of the layer warns (naming it), so one bad batch never poisons the state.
        """
        if not _all_finite(_tensors(stats)):
            self._skip_update("its batch statistics")
            return
        before = [getattr(self, k).clone() for k in self.state_buffers]
        self.num_batches_tracked.add_(1)
        self._update_state(stats, x)
        if not _all_finite([getattr(self, k) for k in self.state_buffers]):
            for key, old in zip(self.state_buffers, before, strict=True):
                getattr(self, key).copy_(old)
            self.num_batches_tracked.sub_(1)
            self._skip_update("the state it would produce")

    def _skip_update(self, what: str) -> None:
        self.skipped_updates += 1
        if self.skipped_updates == 1:
            kind = type(self).__name__
            name = f"{self.label!r} ({kind})" if self.label else f"{kind}({self.num_features})"
            warnings.warn(
                f"normalization layer {name}: NaN or infinity in {what}; this state update was skipped and the "
                f"layer keeps its previous {', '.join(self.state_buffers)} (later skips of this layer are counted in "
                "`skipped_updates`, not reported). Check the inputs and the learning rate (train.lr)",
                RuntimeWarning,
                stacklevel=4,
            )

    @fp32_forward  # statistics and whitening in float32 under bf16 autocast
    def forward(self, x: Tensor) -> Tensor:
        """Normalize ``x`` (N, C) or (N, C, H, W); returns the same shape."""
        self._check_input_dim(x)
        stats = self._select_stats(x)
        return FN.affine(self._normalize(x, stats), self.weight, self.bias)

    # ----------------------------------------------------------------- interop
    @torch.no_grad()
    def load_batchnorm_state(self, bn: nn.Module) -> None:
        """Copy a BatchNorm's affine parameters and running statistics into this layer.

        Afterwards, in eval mode with the same ``eps``, a layer with ``reproduces_bn_after_convert`` gives the
        BatchNorm's outputs. Layers without running state copy only the affine parameters.

        Args:
            bn: ``nn.BatchNorm1d``, ``nn.BatchNorm2d`` or a NormLayer with ``running_mean``/``running_var``
                (statistics are copied when both layers track them, else only the affine parameters).
        """
        if not isinstance(bn, (nn.BatchNorm1d, nn.BatchNorm2d, NormLayer)):
            raise TypeError(
                f"load_batchnorm_state expects nn.BatchNorm1d, nn.BatchNorm2d or a NormLayer, got {type(bn).__name__}"
            )
        if bn.num_features != self.num_features:
            raise ValueError(
                f"cannot load {type(bn).__name__}({bn.num_features}) into {type(self).__name__}"
                f"({self.num_features}): channel counts differ"
            )
        if bn.affine and not self.affine:
            raise ValueError(
                f"{type(bn).__name__} has affine parameters but {type(self).__name__} was built with affine=False;"
                " build it with affine=True to carry them"
            )
        if self.affine:
            if bn.affine:
                self.weight.copy_(bn.weight)
                self.bias.copy_(bn.bias)
            else:
                nn.init.ones_(self.weight)
                nn.init.zeros_(self.bias)
        mean, var = getattr(bn, "running_mean", None), getattr(bn, "running_var", None)
        if self.track_running_stats and mean is not None and var is not None:
            self._load_running_moments(mean, var)
            if getattr(bn, "num_batches_tracked", None) is not None:
                self.num_batches_tracked.copy_(bn.num_batches_tracked)

    def extra_repr(self) -> str:
        parts = [
            f"{self.num_features}",
            f"eps={self.eps}",
            f"momentum={self.momentum}",
            f"affine={self.affine}",
            f"track_running_stats={self.track_running_stats}",
            f"policy={self.policy!r}",
        ]
        parts += [f"{k}={getattr(self, k)!r}" for k in self.hparams]
        return ", ".join(parts)
