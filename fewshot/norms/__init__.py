"""Normalization layers, their registry and the tools that act on whole models.

Layers (``fewshot.norms.names()``): the BatchNorm family (``batchnorm``, ``batchnorm_transductive``), the
per-sample layers (``instancenorm``, ``layernorm``, ``groupnorm``), ``tasknorm`` (TaskNorm-I) and the whitening
layers (``dbn``, ``iternorm``, ``swbn``, ``groupwhiten``, ``kalmannorm``). All share :class:`NormLayer`'s
constructor ``(num_features, *, eps, momentum, affine, track_running_stats, policy, device, dtype, **options)``.

Entry points: ``create(name, num_features, **kwargs)``, ``names()``, ``convert(model, name, **kwargs)``,
``set_policy(model, policy)``, ``task_phase(model, "support" | "query")``, ``frozen_stats(model)``,
``whiteness(x)`` and ``collect_whiteness(model, x)``.
"""

from fewshot.norms import batchnorm as batchnorm
from fewshot.norms import dbn as dbn
from fewshot.norms import groupwhiten as groupwhiten
from fewshot.norms import iternorm as iternorm
from fewshot.norms import kalmannorm as kalmannorm
from fewshot.norms import per_sample as per_sample
from fewshot.norms import swbn as swbn
from fewshot.norms import tasknorm as tasknorm
from fewshot.norms.base import PHASES as PHASES
from fewshot.norms.base import POLICIES as POLICIES
from fewshot.norms.base import NormLayer as NormLayer
from fewshot.norms.convert import convert as convert
from fewshot.norms.diagnostics import collect_whiteness as collect_whiteness
from fewshot.norms.diagnostics import whiteness as whiteness
from fewshot.norms.registry import NORM_LAYERS as NORM_LAYERS
from fewshot.norms.registry import create as create
from fewshot.norms.registry import names as names
from fewshot.norms.state import frozen_stats as frozen_stats
from fewshot.norms.state import set_policy as set_policy
from fewshot.norms.state import task_phase as task_phase

__all__ = [
    "NORM_LAYERS",
    "NormLayer",
    "PHASES",
    "POLICIES",
    "collect_whiteness",
    "convert",
    "create",
    "frozen_stats",
    "names",
    "set_policy",
    "task_phase",
    "whiteness",
]
