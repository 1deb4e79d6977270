"""Normalization layers, their registry and the tools that act on whole models.

Layers (``fewshot.norms.names()``): the BatchNorm family (``batchnorm``, ``batchnorm_transductive``), the
per-sample layers (``instancenorm``, ``layernorm``, ``groupnorm``), ``tasknorm`` (TaskNorm-I) and the whitening
layers (``dbn``, ``iternorm``, ``swbn``, ``groupwhiten``, ``kalmannorm``). All share :class:`NormLayer`'s
constructor ``(num_features, *, eps, momentum, affine, track_running_stats, policy, device, dtype, **options)``.

Entry points: ``create(name, num_features, **kwargs)``, ``names()``, ``convert(model, name, **kwargs)``,
``set_policy(model, policy)``, ``frozen_stats(model)``, the statistics flow (``collect``, ``using``,
``merge``, ``next_state``, ``advance``, ``commit``: :mod:`fewshot.norms.flow`), ``notify_lr_scale(model, factor)``,
``whiteness(x)`` and ``collect_whiteness(model, x)``; after a step on a device, ``read_device_checks(model)`` and
``enforce_state_bounds(model)`` (:mod:`fewshot.norms.deferred`).
"""

from fewshot.norms import batchnorm as batchnorm
from fewshot.norms import dbn as dbn
from fewshot.norms import groupwhiten as groupwhiten
from fewshot.norms import iternorm as iternorm
from fewshot.norms import kalmannorm as kalmannorm
from fewshot.norms import per_sample as per_sample
from fewshot.norms import swbn as swbn
from fewshot.norms import tasknorm as tasknorm
from fewshot.norms.base import NormLayer as NormLayer
from fewshot.norms.convert import convert as convert
from fewshot.norms.deferred import enforce_state_bounds as enforce_state_bounds
from fewshot.norms.deferred import read_device_checks as read_device_checks
from fewshot.norms.diagnostics import collect_whiteness as collect_whiteness
from fewshot.norms.diagnostics import whiteness as whiteness
from fewshot.norms.flow import advance as advance
from fewshot.norms.flow import collect as collect
from fewshot.norms.flow import commit as commit
from fewshot.norms.flow import merge as merge
from fewshot.norms.flow import next_state as next_state
from fewshot.norms.flow import using as using
from fewshot.norms.policy import Policy as Policy
from fewshot.norms.registry import NORM_LAYERS as NORM_LAYERS
from fewshot.norms.registry import create as create
from fewshot.norms.registry import names as names
from fewshot.norms.state import batch_dependent as batch_dependent
from fewshot.norms.state import frozen_stats as frozen_stats
from fewshot.norms.state import notify_lr_scale as notify_lr_scale
from fewshot.norms.state import set_policy as set_policy

__all__ = [
    "NORM_LAYERS",
    "NormLayer",
    "Policy",
    "advance",
    "batch_dependent",
    "collect",
    "collect_whiteness",
    "commit",
    "convert",
    "create",
    "enforce_state_bounds",
    "frozen_stats",
    "merge",
    "names",
    "next_state",
    "notify_lr_scale",
    "read_device_checks",
    "set_policy",
    "using",
    "whiteness",
]
