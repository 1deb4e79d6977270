"""Start a run from another run's backbone weights (config ``model.init_from``).

The two-stage recipe of Chen et al. ("A Closer Look at Few-shot Classification", ICLR 2019) and Meta-Baseline
(Chen et al., ICCV 2021): pre-train the backbone as a classifier over all training classes (learner
``classifier``), then meta-train the same backbone episodically (e.g. learner ``protonet``). Only the backbone's
parameters and buffers are taken (norm running state included); heads and optimizer state are not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

from episodes.cache import sha256_path
from fewshot.errors import ConfigError
from fewshot.training.checkpoint import load_checkpoint

__all__ = ["resolve_init_checkpoint", "load_backbone_weights"]

_PREFIX = "backbone."


def resolve_init_checkpoint(source: str | Path) -> Path:
    """The checkpoint file ``model.init_from`` names: a file as is, a run folder's ``checkpoints/best.pt``.

    Raises:
        ConfigError: neither a checkpoint file nor a run folder with ``checkpoints/best.pt``.
    """
    path = Path(source).expanduser()
    if path.is_dir():
        path = path / "checkpoints" / "best.pt"
    if not path.is_file():
        raise ConfigError(
            f"model.init_from={str(source)!r}: no checkpoint at {str(path)!r}; give a run folder that holds "
            "checkpoints/best.pt (a finished or stopped training run) or a checkpoint file"
        )
    return path


def load_backbone_weights(learner: nn.Module, source: str | Path) -> dict[str, Any]:
    """Copy the backbone parameters and buffers of checkpoint ``source`` into ``learner.backbone``.

    Args:
        learner: a learner with a ``backbone`` sub-module.
        source: ``model.init_from`` (see :func:`resolve_init_checkpoint`).

    Returns:
        ``{"path", "sha256", "tensors"}``: the checkpoint file used, its SHA-256 and how many tensors were copied
        (recorded in the run folder, so the starting point is known exactly).

    Raises:
        ConfigError: the checkpoint holds no backbone, or its backbone does not fit this one (other backbone,
            width, norm layer or input channels); the message names the differing tensors.
    """
    path = resolve_init_checkpoint(source)
    model = load_checkpoint(path).get("model")
    state = {k[len(_PREFIX) :]: v for k, v in (model or {}).items() if k.startswith(_PREFIX)}
    if not state:
        raise ConfigError(f"model.init_from: {str(path)!r} holds no backbone weights ('backbone.*' tensors)")
    own = learner.backbone.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    shapes = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or shapes:
        parts = [f"{name}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}" for name, keys in
                 (("missing", missing), ("unexpected", unexpected), ("other shape", shapes)) if keys]  # fmt: skip
        raise ConfigError(
            f"model.init_from: the backbone in {str(path)!r} does not fit this run's backbone ({'; '.join(parts)}); "
            "use the same model.backbone, backbone_kwargs, norm and input channels as the run it comes from"
        )
    learner.backbone.load_state_dict(state)
    return {"path": str(path), "sha256": sha256_path(path), "tensors": len(state)}
