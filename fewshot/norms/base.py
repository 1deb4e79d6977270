"""``NormLayer``: the base class of every normalization layer in fewshot.

Every layer is three pure functions plus a module built on them (docs/norm-state.md):

* ``stats(x) -> S``: differentiable statistics of a batch (counts, means, (co)variances: sufficient statistics,
  mergeable over tasks and processes with ``merge_stats``);
* ``apply(x, S, state, params) -> y``: normalize with given statistics, state and affine parameters;
* ``update(state, S) -> next_state``: the next state (running moments, SWBN's ``W``), no gradient, inputs unchanged.

``state()`` reads the state as ``{buffer name: tensor}`` and ``commit(next_state, S)`` writes one, skipping it
(and warning once, naming the layer) when a value is NaN or infinite: the only place a layer's state changes.
A policy (:class:`~fewshot.norms.policy.Policy`) is only a choice of which ``S`` reaches ``apply``: the batch's
own (``transductive``; ``running`` in train mode), the state's (``running`` in eval mode) or a support set's,
passed in by ``fewshot.norms.using`` (``support``). The module's ``forward`` makes that choice, hands batch
statistics to a collecting flow (``fewshot.norms.collect``) and, in train mode with updates on, commits
``update(state(), S)`` before applying (SWBN whitens with the updated ``W``).

How to write a layer
--------------------
1. Subclass :class:`NormLayer`, register it with ``@NORM_LAYERS.register("name")`` (from
   ``fewshot.norms.registry``) and import the module in ``fewshot/norms/__init__.py``.
2. Layer-specific options go in ``_init_layer(self, factory_kwargs, *, groups=16, ...)`` (keyword-only, with
   defaults). It runs inside the base constructor after the common attributes (``num_features``, ``eps``,
   ``momentum``, ``affine``, ``policy``) are set and before the state buffers are made. Validate there, store
   plain Python values on ``self``, create extra Parameters with ``**factory_kwargs`` and list the option names
   in ``hparams`` (printed by ``extra_repr``). Do not override ``__init__``; unknown options raise a TypeError
   listing the accepted ones (:meth:`NormLayer.layer_options`, the one place options are checked).
3. Running state: set ``state_buffers = ("running_mean", ...)`` and implement ``_make_state(factory_kwargs)``.
   The base registers them (or ``None`` when ``track_running_stats=False``) with ``num_batches_tracked``.
4. Math hooks ("statistics" are NamedTuples of tensors):

   * ``_batch_stats(x)``: statistics of the batch, differentiable, vmap-legal (no ``.item()``, no
     value-dependent branches); include a ``count`` (:func:`fewshot.norms.sufficient.count_of`) when the update
     needs it;
   * ``_running_stats(state)``: the same structure read from a state dict;
   * ``_normalize(x, S)`` (before the affine) or ``_apply_stats(x, S, state, params)`` (the whole output);
   * ``_next_state(state, S, factor) -> {buffer: tensor}``: pure, under no_grad, with
     :func:`fewshot.norms.functional.ema`;
   * ``_merge_stats(parts)``: Chan's merge of several batches' statistics (:mod:`fewshot.norms.sufficient`).

   Write the math from primitive ops, never ``F.batch_norm``. A fused kernel may be added *beside* it by
   overriding ``_batch_forward`` where :func:`fewshot.norms.kernels.fused_kernels_allowed` says it is exact
   (see ``BatchNorm``); it hands its statistics to ``_observe``.
5. Class flags: ``per_sample = True`` for layers without batch dependence (policy ignored, no batch-size check);
   ``passes_state = True`` for layers that also provide ``forward_with_state(x, prior) -> (y, posterior)`` and
   ``predict(posterior, conv) -> prior``; ``reproduces_bn_after_convert = False`` when an eval-mode layer cannot
   reproduce a BatchNorm's output after :func:`fewshot.norms.convert`; ``fixed_policy`` when the policy is part
   of the layer's definition (``batchnorm_transductive``).
6. Override ``_load_running_moments(mean, var)`` if your state is not ``running_mean``/``running_var``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from fewshot.host_reads import defers_host_reads
from fewshot.norms import functional as FN
from fewshot.norms.flow import current_flow
from fewshot.norms.fp32 import fp32_forward
from fewshot.norms.policy import Policy
from fewshot.registry import accepted_options, check_options

__all__ = ["NormLayer"]

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


def _floats(tensors: list[Tensor]) -> list[Tensor]:
    return [t for t in tensors if t.is_floating_point() or t.is_complex()]


def _all_finite(tensors: list[Tensor]) -> bool:
    floats = _floats(tensors)
    return not floats or bool(torch.stack([torch.isfinite(t).all() for t in floats]).all())


def _finite_flags(groups: list[list[Tensor]], device: torch.device) -> list[Tensor]:
    """One 0-dim bool tensor per group of tensors: all its values finite (computed on ``device``, not read)."""
    floats = [_floats(g) for g in groups]
    checks = [torch.isfinite(t).all() for g in floats for t in g]
    flags = torch.stack(checks) if checks else torch.ones(0, dtype=torch.bool, device=device)
    out, start = [], 0
    for g in floats:
        out.append(flags[start : start + len(g)].all())
        start += len(g)
    return out


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
        policy: where statistics come from: ``"running"``, ``"support"`` or ``"transductive"``
            (:class:`~fewshot.norms.policy.Policy`);
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
    fixed_policy: ClassVar[Policy | None] = None
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
        check_options(options, (*_COMMON_OPTIONS, *self.layer_options()), owner=name)
        factory_kwargs = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = float(eps)
        self.momentum = None if momentum is None else float(momentum)
        self.affine = bool(affine)
        self.track_running_stats = bool(track_running_stats) and bool(self.state_buffers)
        self.update_stats = True
        self._policy = self._validate_policy(policy if policy is not None else self.fixed_policy or Policy.RUNNING)
        self.label: str | None = None  # the layer's name in its model, for messages (the trainer sets it)
        self._skipped_updates = 0  # state updates skipped because of non-finite values, as read on the host
        self._pending_skips: Tensor | None = None  # the device path's counts not read yet (see commit)
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

    def _running_stats(self, state: dict[str, Tensor]) -> Any:
        """Statistics read from ``state``, with the structure ``_batch_stats`` returns."""
        raise NotImplementedError(f"{type(self).__name__} keeps no running state to normalize with")

    def _normalize(self, x: Tensor, stats: Any) -> Tensor:
        """Normalize ``x`` (N, C[, H, W]) with ``stats``; returns ``x_hat`` of the same shape, before the affine."""
        raise NotImplementedError(f"{type(self).__name__} must implement _normalize(x, stats)")

    def _apply_stats(self, x: Tensor, stats: Any, state: dict[str, Tensor], params: dict[str, Tensor]) -> Tensor:
        """``apply``'s math; the default is ``_normalize`` followed by the per-channel affine."""
        return FN.affine(self._normalize(x, stats), params["weight"], params["bias"])

    def _next_state(self, state: dict[str, Tensor], stats: Any, factor: float | Tensor) -> dict[str, Tensor]:
        """New state tensors (not ``num_batches_tracked``) from detached ``stats``, EMA ``factor`` (no grad)."""
        raise NotImplementedError(f"{type(self).__name__} declares state_buffers but no _next_state")

    def _merge_stats(self, parts: list[Any]) -> Any:
        """Merge two or more batches' statistics (see :mod:`fewshot.norms.sufficient`)."""
        raise NotImplementedError(f"{type(self).__name__} cannot merge statistics of several batches")

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
        return accepted_options(cls._init_layer, exclude=("self", "factory_kwargs"))[0]

    def _validate_policy(self, policy: object) -> Policy:
        name = type(self).__name__
        value = Policy.parse(policy, where=f"{name}: policy")
        if self.fixed_policy is not None and value is not self.fixed_policy:
            raise ValueError(
                f"{name} always uses policy {self.fixed_policy.value!r} (it is part of the layer's definition), got "
                f"policy={value.value!r}; pick another layer for policy {value.value!r}"
            )
        return value

    @property
    def policy(self) -> Policy:
        """Where statistics come from (:class:`~fewshot.norms.policy.Policy`)."""
        return self._policy

    @policy.setter
    def policy(self, value: object) -> None:
        self._policy = self._validate_policy(value)

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

    # ----------------------------------------------------------------- the pure pieces
    def state(self) -> dict[str, Tensor]:
        """The layer's state as values: ``{buffer name: tensor}`` (``num_batches_tracked`` included; ``{}`` if none).

        Read through the attributes, so inside ``torch.func.functional_call`` it is the buffer dictionary's.
        """
        if not self.track_running_stats:
            return {}
        return {k: getattr(self, k) for k in (*self.state_buffers, "num_batches_tracked")}

    def stats(self, x: Tensor) -> Any:
        """Differentiable statistics ``S`` of the batch ``x`` (N, C[, H, W]): what ``apply`` and ``update`` take.

        Raises:
            ValueError: a batch of one sample for a batch-statistics layer (its statistics are not meaningful).
        """
        self._check_input_dim(x)
        if not self.per_sample:
            self._check_batch_size(x)
        return self._batch_stats(x)

    def state_stats(self, state: dict[str, Tensor]) -> Any:
        """The statistics the state holds (the ``running`` policy in eval mode), structured like ``stats``."""
        return self._running_stats(state)

    def apply(
        self, x: Tensor, stats: Any, state: dict[str, Tensor] | None = None, params: dict[str, Tensor] | None = None
    ) -> Tensor:
        """Normalize ``x`` with the statistics ``stats``, the state ``state`` and the affine ``params``.

        Args:
            x: ``(N, C)`` or ``(N, C, H, W)``.
            stats: from :meth:`stats` (this batch, a support set, merged batches) or :meth:`state_stats`.
            state: ``{buffer name: tensor}`` (default: :meth:`state`); read by layers whose output depends on it
                (SWBN's ``W``).
            params: ``{"weight", "bias"}`` (default: the layer's own; ``None`` entries skip that part).

        Returns:
            ``y``, the shape of ``x``.
        """
        if params is None:
            params = {"weight": self.weight, "bias": self.bias}
        return self._apply_stats(x, stats, self.state() if state is None else state, params)

    @torch.no_grad()
    def update(self, state: dict[str, Tensor], stats: Any) -> dict[str, Tensor]:
        """The next state from ``state`` and a batch's statistics ``stats`` (no gradient; inputs unchanged).

        ``num_batches_tracked`` counts the update; the running-average factor is ``momentum``, or
        ``1/num_batches_tracked`` (after counting) when ``momentum`` is None.
        """
        if not self.track_running_stats:
            return {}
        count = state["num_batches_tracked"] + 1
        factor = self.momentum if self.momentum is not None else 1.0 / count.to(torch.float64)
        return {**self._next_state(state, _detach(stats), factor), "num_batches_tracked": count}

    def merge_stats(self, parts: list[Any]) -> Any:
        """The statistics of the union of disjoint batches from theirs (exact in any order; one part: itself).

        Layers with state implement ``_merge_stats`` (see :mod:`fewshot.norms.sufficient`).
        """
        if not parts:
            raise ValueError(f"{type(self).__name__}.merge_stats needs at least one batch's statistics, got none")
        return parts[0] if len(parts) == 1 else self._merge_stats(parts)

    def commit(self, next_state: dict[str, Tensor], stats: Any = None) -> bool | Tensor:
        """Write ``next_state`` into the buffers: the one place where a layer's state changes. Returns whether it did.

        A NaN or infinity in ``stats`` (the statistics the update came from) or in ``next_state`` skips the write:
        the state stays bit for bit, ``skipped_updates`` counts it and the first skip of the layer warns, naming
        it, so one bad batch never poisons the state. Call it outside ``vmap``.

        On a device (:func:`~fewshot.host_reads.defers_host_reads`) the guard reads nothing on the host: each
        buffer gets ``torch.where(all finite, new, previous)`` (the same values), the skips are counted on the
        device, and the count and the warning come at the next host read of the checks
        (:func:`fewshot.norms.deferred.read_device_checks`, which the trainer calls before every log row,
        validation and checkpoint, or reading ``skipped_updates``). The return value is then a 0-dim bool tensor.
        """
        tensors = [*next_state.values(), *_tensors(stats)]
        if tensors and defers_host_reads(tensors[0]):
            return self._commit_on_device(next_state, stats, tensors[0].device)
        if not _all_finite(_tensors(stats)):
            self._skip_update("its batch statistics")
            return False
        if not _all_finite(list(next_state.values())):
            self._skip_update("the state it would produce")
            return False
        with torch.no_grad():
            for key, value in next_state.items():
                getattr(self, key).copy_(value)
        return True

    def _commit_on_device(self, next_state: dict[str, Tensor], stats: Any, device: torch.device) -> Tensor:
        """:meth:`commit` without a host read: the previous state is kept where a value is not finite."""
        stats_ok, state_ok = _finite_flags([_tensors(stats), list(next_state.values())], device)
        ok = stats_ok & state_ok
        with torch.no_grad():
            for key, value in next_state.items():
                buffer = getattr(self, key)
                buffer.copy_(torch.where(ok, value, buffer))
            skips = torch.stack([~stats_ok, stats_ok & ~state_ok]).long()  # (statistics, produced state)
            if self._pending_skips is not None and self._pending_skips.device != device:
                self.read_device_checks()  # the model moved since: read what the old device counted
            self._pending_skips = skips if self._pending_skips is None else self._pending_skips + skips
        return ok

    @property
    def skipped_updates(self) -> int:
        """State updates skipped because of non-finite values (reads the device's pending count: a host read)."""
        self.read_device_checks()
        return self._skipped_updates

    def pending_device_checks(self) -> Tensor | None:
        """The device path's skip counts not read yet, ``(2,)`` int64 (statistics, produced state), or None."""
        return self._pending_skips

    def read_device_checks(self, counts: list[int] | None = None) -> None:
        """Take the device path's pending skip counts into ``skipped_updates``; the first skip of the layer warns.

        Args:
            counts: the values of :meth:`pending_device_checks`, when the caller read several layers at once
                (:func:`fewshot.norms.deferred.read_device_checks`); None reads them here (a host read).
        """
        if self._pending_skips is None:
            return
        n_stats, n_state = self._pending_skips.tolist() if counts is None else counts
        self._pending_skips = None
        if n_stats + n_state == 0:
            return
        first = self._skipped_updates == 0
        self._skipped_updates += n_stats + n_state
        if first:
            what = " and in ".join(
                w for w, n in (("its batch statistics", n_stats), ("the state it would produce", n_state)) if n
            )
            count = "this state update was" if n_stats + n_state == 1 else f"{n_stats + n_state} state updates were"
            self._warn_skipped(what, f"{count} skipped (found on the device since the last read of its checks)")

    def _skip_update(self, what: str) -> None:
        self._skipped_updates += 1
        if self._skipped_updates == 1:
            self._warn_skipped(what, "this state update was skipped", stacklevel=5)

    def _warn_skipped(self, what: str, skipped: str, stacklevel: int = 3) -> None:
        kind = type(self).__name__
        name = f"{self.label!r} ({kind})" if self.label else f"{kind}({self.num_features})"
        warnings.warn(
            f"normalization layer {name}: NaN or infinity in {what}; {skipped} and the layer keeps its previous "
            f"{', '.join(self.state_buffers)} (later skips of this layer are counted in `skipped_updates`, not "
            "reported). Check the inputs and the learning rate (train.lr)",
            RuntimeWarning,
            stacklevel=stacklevel,
        )

    def enforce_state_bounds(self) -> None:
        """Hook: apply the bounds on the state that the device path of an update leaves to a host read.

        The trainer calls it at every log row (:func:`fewshot.norms.deferred.enforce_state_bounds`). SWBN caps
        ``W``'s eigenvalues there on a device; other layers bound nothing this way.
        """

    def on_lr_scale(self, factor: float) -> None:
        """Hook: the optimizer's learning rate is now ``factor`` × its initial value (the trainer calls it).

        Layers whose own rates follow the learning rate (SWBN's whitening rate) override it; others ignore it.
        """

    # ----------------------------------------------------------------- the module form
    def _updates_state(self) -> bool:
        return self.training and self.update_stats and self.track_running_stats

    def _source(self, flow: Any) -> str:
        """``"own"`` (the batch's), ``"state"`` or ``"given"``: where this forward's statistics come from."""
        if self.per_sample or self.policy is Policy.TRANSDUCTIVE:
            return "own"
        if self.policy is Policy.RUNNING:
            return "own" if self.training or not self.track_running_stats else "state"
        if flow is not None and flow.gives(self):
            return "given"
        if flow is not None and flow.collects:
            return "own"
        raise RuntimeError(
            f"{type(self).__name__} has policy='support' but got a forward with no support statistics; run the "
            "support set inside `with fewshot.norms.collect(model) as stats:` and the query inside "
            "`with fewshot.norms.using(model, stats):` (same task), or use set_policy(model, 'running'/'transductive')"
        )

    def batch_dependent(self) -> bool:
        """Whether a forward now (this mode, policy and statistics flow) normalizes with its own batch's statistics,
        so that each output row depends on the other rows: BN in training or without running state, any layer under
        ``transductive``, TaskNorm's context outside ``using``. False for per-sample layers and for a forward that is
        given statistics (``using``); a ``support``-policy forward with neither raises in ``forward`` itself."""
        try:
            return not self.per_sample and self._source(current_flow()) == "own"
        except RuntimeError:
            return False

    def _observe(self, stats: Any, flow: Any) -> None:
        """A batch-statistics forward saw ``stats``: hand them to a collecting flow, and update the state."""
        if flow is not None and flow.collects:
            flow.record(self, stats)
        if self._updates_state():
            detached = _detach(stats)
            self.commit(self.update(self.state(), detached), detached)

    def _batch_forward(self, x: Tensor, flow: Any) -> Tensor:
        """A forward with the batch's own statistics (a layer with a fused kernel overrides it)."""
        if not self.per_sample:
            self._check_batch_size(x)
        stats = self._batch_stats(x)
        self._observe(stats, flow)
        return self.apply(x, stats)

    @fp32_forward  # statistics and whitening in float32 under bf16 autocast
    def forward(self, x: Tensor) -> Tensor:
        """Normalize ``x`` (N, C) or (N, C, H, W) with the statistics the policy picks; returns the same shape."""
        self._check_input_dim(x)
        flow = current_flow()
        source = self._source(flow)
        if source == "own":
            return self._batch_forward(x, flow)
        stats = flow.given(self) if source == "given" else self.state_stats(self.state())
        return self.apply(x, stats)

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
            f"policy={self.policy.value!r}",
        ]
        parts += [f"{k}={getattr(self, k)!r}" for k in self.hparams]
        return ", ".join(parts)
