"""``convert``: replace the BatchNorm layers of any torch model with a registered normalization layer.

Follows the pattern of ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: recurse over ``named_children``,
re-attach replacements with ``add_module``, return a new root when the root itself is converted. Unlike it,
``convert`` works on a deep copy, so the model passed in is never modified, and it copies (never shares) the
affine parameters and running statistics.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _NormBase

from fewshot.norms.base import NormLayer
from fewshot.norms.registry import NORM_LAYERS

__all__ = ["convert"]

# Source types converted, matched exactly (a subclass of BatchNorm2d may behave differently: it raises).
_SOURCES: tuple[type[nn.Module], ...] = (nn.BatchNorm1d, nn.BatchNorm2d)
# Normalization types that are not converted: meeting one raises instead of leaving it silently in place.
_REFUSED: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm, nn.RMSNorm)


def _is_source(module: nn.Module) -> bool:
    return type(module) in _SOURCES or isinstance(module, NormLayer)


def _factory_kwargs(module: nn.Module) -> dict[str, Any]:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next((b for b in module.buffers() if b.is_floating_point()), None)
    if tensor is None:
        return {}
    return {"device": tensor.device, "dtype": tensor.dtype}


def _replacement(source: nn.Module, target: type[NormLayer], kwargs: dict[str, Any]) -> NormLayer:
    options: dict[str, Any] = {
        "eps": source.eps,
        "momentum": source.momentum,
        "affine": source.affine,
        "track_running_stats": source.track_running_stats,
        **_factory_kwargs(source),
    }
    if isinstance(source, NormLayer) and target.fixed_policy is None:
        options["policy"] = source.policy
    options.update(kwargs)
    layer = target(source.num_features, **options)
    layer.load_batchnorm_state(source)
    layer.train(source.training)
    return layer


def _check_convertible(model: nn.Module) -> None:
    for path, module in model.named_modules():
        if isinstance(module, _REFUSED) and not _is_source(module):
            raise TypeError(
                f"convert does not handle {type(module).__name__} at {path or '<root>'!r}: it converts "
                "nn.BatchNorm1d, nn.BatchNorm2d and fewshot NormLayers only; replace that layer by hand or build "
                "the model with nn.BatchNorm2d"
            )


def _convert(module: nn.Module, target: type[NormLayer], kwargs: dict[str, Any]) -> nn.Module:
    if _is_source(module):
        return _replacement(module, target, kwargs)
    for name, child in module.named_children():
        new = _convert(child, target, kwargs)
        if new is not child:
            module.add_module(name, new)
    return module


def convert(model: nn.Module, name: str, **kwargs: Any) -> nn.Module:
    """A copy of ``model`` whose BatchNorm layers are replaced with the registered layer ``name``.

    Converted: ``nn.BatchNorm1d``, ``nn.BatchNorm2d`` (exact types) and every fewshot NormLayer. Refused with a
    TypeError naming the module path: every other torch normalization type (``BatchNorm3d``, ``SyncBatchNorm``,
    ``LazyBatchNorm*``, ``InstanceNorm*``, ``GroupNorm``, ``LayerNorm``, ``LocalResponseNorm``, ``RMSNorm``)
    and subclasses of ``BatchNorm1d/2d``.

    Each new layer takes ``eps``, ``momentum``, ``affine``, ``track_running_stats``, device, dtype and
    ``.training`` from the layer it replaces (and ``policy`` when that is a NormLayer and the target's policy
    is not fixed); ``kwargs`` override them and pass layer options (e.g. ``groups=8``). Affine parameters and
    running statistics are *copied* into new tensors by ``layer.load_batchnorm_state``: for layers with
    ``reproduces_bn_after_convert`` the converted model in eval mode gives the original model's outputs
    until it is trained (whitening layers seed a diagonal covariance from ``running_var``). Layers without
    running state (``batchnorm_transductive``, ``tasknorm``, per-sample layers) take only the affine part.

    The input model is not modified (the conversion works on a deep copy; cached support statistics are not
    copied). Use the return value, which is a new root when ``model`` itself is a BatchNorm layer.

    Args:
        model: any ``nn.Module``.
        name: a registered layer name (``fewshot.norms.names()``).
        **kwargs: options for every new layer.

    Returns:
        The converted copy.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        >>> type(convert(net, "groupnorm", groups=4)[1]).__name__
        'GroupNorm'
    """
    target = NORM_LAYERS.get(name)
    _check_convertible(model)  # before copying: refused types include lazy modules, which cannot be copied
    model = copy.deepcopy(model)
    with torch.no_grad():
        return _convert(model, target, kwargs)
