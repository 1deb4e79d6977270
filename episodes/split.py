"""`ClassSplit`: one split of one dataset under one protocol, decoded and held in memory.

This is the contract between the dataset loaders (``episodes/datasets/``) and the episodic sampler
(``episodes/sampler.py``): a loader returns a ``ClassSplit``; the sampler only ever reads one.

Images are stored once, as uint8, at their final size. A class is a list of indices into that store plus a
quarter-turn count ``k`` (``numpy.rot90(image, k)`` is applied when an episode is drawn), so that the
Vinyals protocol's "each rotation is its own class" costs no extra memory.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from episodes.pixels import PixelNorm

__all__ = ["ClassSplit"]


@dataclass(frozen=True, eq=False)
class ClassSplit:
    """One split (``train``/``val``/``test``/``trainval``) of a dataset under a protocol.

    Attributes:
        dataset: registry name of the dataset, e.g. ``"omniglot"``.
        protocol: e.g. ``"vinyals"``, ``"lake"``, ``"ravi"``, ``"folder"``.
        split: e.g. ``"train"``.
        images: uint8 array, ``(n_images, H, W)`` for grey images or ``(n_images, H, W, C)`` for colour.
        image_ids: dataset-level id of each stored image (stable across formats and machines),
            e.g. ``"Korean/character07/0842_03"``; length ``n_images``.
        class_names: dataset-level name of each class, e.g. ``"Korean/character07/rot090"``.
        class_images: for each class, an int64 array of indices into ``images``.
        class_rotation: int array ``(n_classes,)`` of quarter turns (0..3) applied to the class's images.
        class_groups: for each class, the group it belongs to (the Omniglot alphabet), used for
            within-alphabet episodes; empty strings where the dataset has no groups.
        fingerprint: hex digest identifying the source data, the preprocessing and the protocol/split;
            fixed-episode files refuse to load against a split with another fingerprint.
        meta: free-form description of the preprocessing (image size, inversion, rotation mode, ...),
            shown by ``data info`` and stored in fixed-episode files.
        pixel_norm: per-channel standardization applied when episodes are built (config ``data.normalize``),
            or ``None`` for ``x / 255``. Not part of ``fingerprint``: it changes the model's input, not which
            images an episode holds.
    """

    dataset: str
    protocol: str
    split: str
    images: np.ndarray
    image_ids: list[str]
    class_names: list[str]
    class_images: list[np.ndarray]
    class_rotation: np.ndarray
    class_groups: list[str]
    fingerprint: str
    meta: dict = field(default_factory=dict)
    pixel_norm: PixelNorm | None = None

    @property
    def n_classes(self) -> int:
        return len(self.class_names)

    @property
    def n_images(self) -> int:
        """Number of (class, image) pairs, i.e. images counted once per class they appear in."""
        return int(sum(len(ix) for ix in self.class_images))

    @property
    def image_shape(self) -> tuple[int, ...]:
        """Shape of one image as the model sees it: ``(C, H, W)``."""
        if self.images.ndim == 3:
            return (1, *self.images.shape[1:])
        return (self.images.shape[3], *self.images.shape[1:3])
