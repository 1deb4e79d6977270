"""Meta-test whitening diagnostics of a trained run: whiteness of normalized features, conditioning of support
statistics, per normalization layer, on the fixed episodes of the support-size sweep.

For each (way, K, policy) and each of the first ``n`` episodes of the very episode file the accuracy comes from:

* **whiteness** of every norm layer's output for the query images, normalized as the policy prescribes
  (``running``: running statistics; ``support``: the K·N support images' statistics applied to the queries;
  ``transductive``: statistics of support and queries together, whose output is measured): ``cov_error =
  ‖Σ − I‖_F / √d`` and the scale-free ``corr_error = ‖R − I‖_F / √d`` of :func:`fewshot.norms.diagnostics.whiteness`
  (``d`` channels, ``Σ`` their covariance over all images and positions, ``R`` the correlation). The output
  includes the layer's affine transform, so ``corr_error`` is the one to compare across layers.
* **conditioning** of the statistics a ``support`` layer estimates from the support set: the condition number
  ``λ_max / λ_min`` of the covariance of the layer's input over the K·N support images and their positions, per
  whitening group of ``g`` channels (the largest over groups) for group-whitening layers, of the full ``C × C``
  covariance otherwise (``inf`` when singular). Reported on ``support`` rows only: that is the regime it describes.

Values are averaged over episodes (``cov_error``, ``corr_error``) or their median is taken (``support_cond``).
Layers that MAML adapts in its inner loop are measured at the meta-learned weights, before adaptation.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

import fewshot.norms as norms
from fewshot.evaluation.outputs import atomic_write_text
from fewshot.learners.base import predict_norm_policy
from fewshot.norms import whitening_math as WM
from fewshot.norms.base import NormLayer
from fewshot.norms.diagnostics import collect_whiteness, whiteness
from fewshot.norms.policy import Policy

__all__ = [
    "WHITENESS_FILE", "WHITENESS_COLUMNS", "support_conditioning", "episode_diagnostics", "summarize",
    "write_whiteness",
]  # fmt: skip

WHITENESS_FILE = "diagnostics/whiteness.csv"
WHITENESS_COLUMNS = (
    "way", "shot", "query", "policy", "layer", "episodes", "cov_error", "corr_error", "support_cond", "cond_dim",
    "checkpoint_sha256",
)  # fmt: skip


def _condition(x: Tensor, layer: nn.Module) -> tuple[float, int]:
    """(largest group condition number, group size) of the channel covariance of ``x`` for ``layer``."""
    g = getattr(layer, "group_size", None)
    if not isinstance(g, int) or g < 2:
        return whiteness(x)["cond"], int(x.shape[1])
    xd = x.detach().double()
    mean = xd.mean(dim=[d for d in range(xd.dim()) if d != 1], keepdim=True)
    evals = torch.linalg.eigvalsh(WM.group_second_moment((xd - mean).contiguous(), g))  # (G, g) ascending
    lo, hi = evals[:, 0], evals[:, -1]
    singular = lo <= g * torch.finfo(torch.float64).eps * hi
    cond = torch.where(singular, torch.full_like(hi, math.inf), hi / lo.clamp_min(torch.finfo(torch.float64).tiny))
    return float(cond.max()), g


def support_conditioning(backbone: nn.Module, support_x: Tensor) -> dict[str, tuple[float, int]]:
    """Per norm layer: (condition number, dimension) of the statistics its input gives over ``support_x``.

    Runs one forward of ``backbone`` (the caller sets policy and phase) with temporary pre-forward hooks.
    """
    found: dict[str, tuple[float, int]] = {}
    handles = []
    try:
        for path, module in backbone.named_modules():
            if isinstance(module, NormLayer):

                def hook(m: nn.Module, inputs: Any, path: str = path) -> None:
                    found[path] = _condition(inputs[0], m)

                handles.append(module.register_forward_pre_hook(hook))
        backbone(support_x)
    finally:
        for h in handles:
            h.remove()
    return found


def episode_diagnostics(learner: Any, episode: Any, policy: str) -> dict[str, dict[str, float]]:
    """``{layer: {cov_error, corr_error, support_cond, cond_dim}}`` for one episode under a meta-test policy.

    Changes no parameter or buffer (``learner.mode(..., frozen=True)`` under ``torch.no_grad``).
    """
    norm_policy = predict_norm_policy(policy)
    bb = learner.backbone
    sx, qx = learner.prepare(episode.support_x), learner.prepare(episode.query_x)
    out: dict[str, dict[str, float]] = {}
    with torch.no_grad(), learner.mode(training=False, norm_policy=norm_policy, frozen=True):
        if norm_policy is Policy.SUPPORT:
            with norms.collect(bb) as support_stats:
                cond = support_conditioning(bb, sx)
            with norms.using(bb, support_stats):
                white = collect_whiteness(bb, qx)
        elif norm_policy is Policy.TRANSDUCTIVE:
            cond, white = {}, collect_whiteness(bb, torch.cat([sx, qx]))
        else:
            cond, white = {}, collect_whiteness(bb, qx)
    for layer, w in white.items():
        c, dim = cond.get(layer, (math.nan, 0))
        out[layer] = {"cov_error": w["cov_error"], "corr_error": w["corr_error"], "support_cond": c, "cond_dim": dim}
    return out


def write_whiteness(run_dir: str | Path, rows: list[dict[str, Any]]) -> Path:
    """Write ``rows`` (keys :data:`WHITENESS_COLUMNS`) to ``<run_dir>/diagnostics/whiteness.csv`` atomically."""
    path = Path(run_dir) / WHITENESS_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=WHITENESS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return path


def summarize(per_episode: list[dict[str, dict[str, float]]]) -> dict[str, dict[str, float]]:
    """Per layer: mean ``cov_error`` and ``corr_error``, median ``support_cond`` over the episodes."""
    layers = list(per_episode[0]) if per_episode else []
    out = {}
    for layer in layers:
        vals = [ep[layer] for ep in per_episode if layer in ep]
        out[layer] = {
            "episodes": len(vals),
            "cov_error": float(np.mean([v["cov_error"] for v in vals])),
            "corr_error": float(np.mean([v["corr_error"] for v in vals])),
            "support_cond": float(np.median([v["support_cond"] for v in vals])),
            "cond_dim": int(vals[0]["cond_dim"]),
        }
    return out
