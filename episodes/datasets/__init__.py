"""Dataset loaders and their registry.

Each dataset module registers a loader class in :data:`DATASETS` with ``@DATASETS.register("name")``.
A loader class has:

* ``protocols``: tuple of protocol names it supports (the first is the default);
* ``splits(protocol)``: tuple of split names for a protocol;
* ``load(protocol, split, data_root, **options) -> ClassSplit`` (classmethod or staticmethod);
* ``info(data_root, **options) -> dict`` describing what is on disk (classes and images per protocol/split);
* ``decode_file(file, /, **options) -> uint8 (H, W) or (H, W, C)``: one image file preprocessed exactly as the
  loader stores its images (given the same options; options that select classes or files are ignored), so that
  a trained model gets a user's images as it got its training data (:mod:`fewshot.inference.images`).

:func:`load_split` is the one entry point the rest of the framework uses.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from episodes.split import ClassSplit
from fewshot.registry import Registry

__all__ = ["DATASETS", "load_split"]

DATASETS = Registry("dataset")

# Modules that register loaders; imported on first use so a missing optional module does not break others.
_DATASET_MODULES = ("omniglot", "miniimagenet", "imagefolder")
_loaded = False


def _ensure_registered() -> None:
    global _loaded
    if _loaded:
        return
    for name in _DATASET_MODULES:
        try:
            importlib.import_module(f"episodes.datasets.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"episodes.datasets.{name}":
                raise
    _loaded = True


def get_dataset(name: str) -> Any:
    """The registered loader class for ``name`` (raises UnknownNameError listing the registered names)."""
    _ensure_registered()
    return DATASETS.get(name)


def load_split(
    dataset: str,
    protocol: str | None = None,
    split: str = "train",
    data_root: str | Path | None = None,
    **options: Any,
) -> ClassSplit:
    """Load one split of a dataset as an in-memory :class:`~episodes.split.ClassSplit`.

    Args:
        dataset: registry name (``omniglot``, ``miniimagenet``, ``imagefolder``).
        protocol: protocol name; ``None`` takes the dataset's default.
        split: split name (``train``, ``val``, ``test``, ``trainval`` where defined).
        data_root: data root; ``None`` resolves it (flag, ``$FEWSHOT_DATA``, ``./data``, ``../shared/data``).
        **options: dataset-specific preprocessing options (image size, inversion, rotation mode, ...).
    """
    loader = get_dataset(dataset)
    protocol = protocol or loader.protocols[0]
    return loader.load(protocol, split, data_root, **options)
