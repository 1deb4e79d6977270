"""Whiteness diagnostics: how close the channel covariance of activations is to the identity.

``whiteness(x)`` measures one activation tensor; ``collect_whiteness(model, x)`` measures the output of every
normalization layer of a model in one forward pass, without changing any state.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from fewshot.norms.base import NormLayer
from fewshot.norms.state import frozen_stats

__all__ = ["collect_whiteness", "whiteness"]


def whiteness(x: Tensor) -> dict[str, float]:
    """Whiteness metrics of activations ``x``: the covariance of the channels over all ``N·H·W`` positions.

    With ``Σ = (1/m) X_c X_cᵀ`` the biased ``d × d`` channel covariance (``d = C``, ``m = N·H·W``, computed in
    float64) and ``R = D^{-1/2} Σ D^{-1/2}`` the correlation (``D = diag Σ``; a zero-variance channel gets a
    zero row and column in ``R``):

    * ``cov_error = ‖Σ − I‖_F / √d``: 0 iff the channels are white (unit variance and uncorrelated); it also
      measures scale, so a standardized-but-correlated and a decorrelated-but-rescaled output both score > 0.
    * ``corr_error = ‖R − I‖_F / √d``: 0 iff the channels are uncorrelated, whatever their scale (the
      decorrelation part only).
    * ``mean_abs_corr``: mean ``|R_ij|`` over ``i ≠ j`` (0 for ``d = 1``).
    * ``cond``: condition number ``λ_max / λ_min`` of ``Σ`` (``inf`` when ``Σ`` is numerically singular:
      ``λ_min ≤ d·ε_float64·λ_max``).
    * ``mean_var``: mean channel variance ``tr Σ / d``.
    * ``num_channels`` (d) and ``num_samples`` (m), as floats.

    Args:
        x: ``(N, C)`` or ``(N, C, H, W)`` activations.

    Returns:
        A dict of Python floats with the keys above.

    Example:
        >>> import torch
        >>> round(whiteness(torch.eye(4) * 2.0)["cov_error"], 6)  # 4 samples: Σ = I − 11ᵀ/4
        0.5
    """
    if x.dim() not in (2, 4):
        raise ValueError(f"expected 2D (N, C) or 4D (N, C, H, W) activations (got {x.dim()}D input)")
    d = x.shape[1]
    xm = x.detach().to(torch.float64).transpose(0, 1).reshape(d, -1)
    m = xm.shape[1]
    if m < 2:
        raise ValueError(f"whiteness needs at least 2 values per channel, got input of shape {tuple(x.shape)}")
    xc = xm - xm.mean(dim=1, keepdim=True)
    cov = xc @ xc.T / m
    var = cov.diagonal()
    inv_std = torch.where(var > 0, var.clamp_min(torch.finfo(var.dtype).tiny).rsqrt(), torch.zeros_like(var))
    corr = cov * inv_std[:, None] * inv_std[None, :]
    eye = torch.eye(d, dtype=cov.dtype)
    eigvals = torch.linalg.eigvalsh(cov)
    lo, hi = float(eigvals[0]), float(eigvals[-1])
    off = corr - torch.diag_embed(corr.diagonal())
    return {
        "cov_error": float(torch.linalg.matrix_norm(cov - eye) / math.sqrt(d)),
        "corr_error": float(torch.linalg.matrix_norm(corr - eye) / math.sqrt(d)),
        "mean_abs_corr": float(off.abs().sum() / (d * (d - 1))) if d > 1 else 0.0,
        "cond": hi / lo if lo > d * torch.finfo(torch.float64).eps * hi else math.inf,
        "mean_var": float(var.mean()),
        "num_channels": float(d),
        "num_samples": float(m),
    }


def collect_whiteness(model: nn.Module, x: Tensor, *args: Any, **kwargs: Any) -> dict[str, dict[str, float]]:
    """:func:`whiteness` of the output of every NormLayer of ``model`` for the input ``x``.

    Runs ``model(x, *args, **kwargs)`` once under ``torch.no_grad()`` and :func:`~fewshot.norms.frozen_stats`
    with temporary forward hooks (removed afterwards, also on error), so no parameter, buffer or running state
    changes. Outputs include the layer's affine transform. Layers called through ``forward_with_state`` rather
    than ``__call__`` do not fire hooks and are not measured. A model with ``policy="support"`` layers must be
    run inside ``fewshot.norms.collect`` or ``using``.

    Args:
        model: any ``nn.Module`` containing NormLayers.
        x: the model's input.
        *args, **kwargs: further arguments for the forward pass.

    Returns:
        ``{module path: whiteness metrics}`` in module order (``"<root>"`` for the model itself).
    """
    results: dict[str, dict[str, float]] = {}
    handles = []

    def make_hook(path: str):
        def hook(module: nn.Module, inputs: Any, output: Tensor) -> None:
            results[path] = whiteness(output)

        return hook

    try:
        for path, module in model.named_modules():
            if isinstance(module, NormLayer):
                handles.append(module.register_forward_hook(make_hook(path or "<root>")))
        with torch.no_grad(), frozen_stats(model):
            model(x, *args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    return results
