"""Features of a user's images from a trained run's backbone, and saving them with an index of the files.

The features are the backbone's output ``(N, D)``: what ProtoNet compares (64 for Conv-4 on 28x28 images, 1600
on 84x84) and what MAML's linear head reads. Norm statistics: ``running`` (the training statistics; each image's
features depend on that image alone, so any batching gives the same rows) or ``transductive`` (the statistics
of all the given images together, as a transductive MAML run sees its test batches).
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from episodes.cache import atomic_write_bytes
from fewshot.device import model_device
from fewshot.errors import ConfigError
from fewshot.inference.images import image_files, load_images
from fewshot.inference.run import RunLike, as_loaded_run
from fewshot.learners.base import predict_norm_policy, rowwise

__all__ = ["EMBED_POLICIES", "FEATURE_FORMATS", "Embeddings", "embed"]

EMBED_POLICIES = ("running", "transductive")
FEATURE_FORMATS = (".npy", ".pt")
#: Images per forward pass under the ``running`` policy (bounds memory; rows do not depend on it).
BATCH = 256


@dataclass(frozen=True)
class Embeddings:
    """Backbone features of image files.

    Attributes:
        files: the files, in row order.
        folders: each file's sub-folder (``""`` if none), e.g. its class.
        features: float32 ``(n_images, D)``.
        policy: the norm policy used (``running`` or ``transductive``).
    """

    files: tuple[str, ...]
    folders: tuple[str, ...]
    features: np.ndarray
    policy: str

    def index(self) -> pd.DataFrame:
        """``row, file, folder``: row ``i`` of :attr:`features` is ``file``."""
        return pd.DataFrame({"row": range(len(self.files)), "file": list(self.files), "folder": list(self.folders)})

    def save(self, out: str | Path, *, force: bool = False) -> tuple[Path, Path]:
        """Write the features to ``out`` (``.npy``: numpy array; ``.pt``: torch tensor) and the index next to it.

        The index is ``out`` with the suffix ``.csv`` (``feats.npy`` -> ``feats.csv``). Both files are written
        atomically.

        Returns:
            ``(features file, index file)``.

        Raises:
            ConfigError: another suffix, or a file exists and ``force`` is false.
        """
        out = Path(out)
        if out.suffix not in FEATURE_FORMATS:
            raise ConfigError(f"features file must end in {' or '.join(FEATURE_FORMATS)}, got {str(out)!r}")
        index = out.with_suffix(".csv")
        for path in (out, index):
            if path.exists() and not force:
                raise ConfigError(
                    f"refusing to overwrite {str(path)!r}; pass --force (force=True) or choose another --out"
                )
        buffer = io.BytesIO()
        if out.suffix == ".npy":
            np.save(buffer, self.features)
        else:
            torch.save(torch.from_numpy(self.features), buffer)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(out, buffer.getvalue())
        atomic_write_bytes(index, self.index().to_csv(index=False).encode("utf-8"))
        return out, index


def _features(learner: Any, x: torch.Tensor, policy: str) -> torch.Tensor:
    return _features_on_device(learner, x.to(model_device(learner)), policy).cpu()


def _features_on_device(learner: Any, x: torch.Tensor, policy: str) -> torch.Tensor:
    backbone = learner.backbone
    with torch.no_grad(), learner.mode(training=False, norm_policy=predict_norm_policy(policy), frozen=True):
        if policy == "transductive":
            return backbone(learner.prepare(x))
        return torch.cat([rowwise(backbone, learner.prepare(chunk)) for chunk in x.split(BATCH)])


def embed(run: RunLike, images: str | Path | list[str | Path], *, policy: str = "running") -> Embeddings:
    """Backbone features of ``images`` (a file, a list of files, or a folder with optional class sub-folders).

    Args:
        run: a run folder (also an archived one) or a loaded run (:func:`~fewshot.inference.run.load_run`).
        images: see :func:`~fewshot.inference.images.image_files`.
        policy: ``running`` (default) or ``transductive`` (see the module docstring).

    Raises:
        DataError: missing, unreadable or ill-fitting images (named). ConfigError: another policy.
    """
    if policy not in EMBED_POLICIES:
        raise ConfigError(
            f"embed policy must be one of {', '.join(EMBED_POLICIES)}, got {policy!r} (support statistics need a "
            "support set: use predict)"
        )
    loaded = as_loaded_run(run)
    found = image_files(images)
    x = load_images(found.files, loaded.cfg, loaded.image_shape)
    features = _features(loaded.learner, x, policy)
    return Embeddings(
        files=tuple(map(str, found.files)),
        folders=found.folders,
        features=features.float().contiguous().numpy(),
        policy=policy,
    )
