"""Random horizontal flip and padded random crop of training episodes (config key ``data.augment``), deterministic.

The standard augmentation of supervised pre-training on miniImageNet and CIFAR: pad each image by ``p`` pixels
(zeros, or a mirror image of the border), cut an ``H x W`` window back out at a uniformly random offset, and flip
it left-right with probability 1/2 (Chen et al., "A Closer Look at Few-shot Classification", ICLR 2019;
Meta-Baseline, Chen et al., ICCV 2021; the torchvision ``RandomCrop(size, padding)`` then
``RandomHorizontalFlip()`` recipe). Off unless the config asks for it, and only ever applied to *training*
episodes: the fixed validation and test episodes are built from indices that carry no draw.

Determinism: the parameters of episode ``i`` (one flip bit and one crop offset per image) are drawn by the
sampler from episode ``i``'s own Philox generator, key ``(seed, i)``, *after* every other draw
(:mod:`episodes.sampler`), so switching augmentation on or off leaves the classes, images and rotations of every
episode unchanged, and episode ``i`` is the same on every run, after a resume, and on every device.

Applying them costs one gather: output pixel ``(m, y, x)`` is read from source row
``oy[m] + y − p`` and column ``ox[m] + x' − p`` with ``x' = W − 1 − x`` for a flipped image (``x`` otherwise);
a coordinate outside the image is zero (``padding_mode: zeros``) or mirrored without repeating the edge
(``reflect``, as ``torch.nn.functional.pad(mode="reflect")``). No padded copy is made and no Python loop runs over
the images; the same code runs on the uint8 store on the CPU and on a GPU
(:class:`episodes.device_builder.DeviceEpisodeBuilder`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fewshot.errors import ConfigError

__all__ = ["PADDING_MODES", "AugmentDraw", "ImageAugment"]

#: How ``crop_padding`` fills the border: ``zeros`` (black before ``data.normalize``) or ``reflect``.
PADDING_MODES = ("zeros", "reflect")
_KEYS = ("flip", "crop_padding", "padding_mode")
_EXAMPLE = "e.g. data.augment: {flip: true, crop_padding: 8}"


@dataclass(frozen=True)
class ImageAugment:
    """What ``data.augment`` asks for (validated on construction).

    Attributes:
        flip: flip each image left-right with probability 1/2.
        crop_padding: pad each side by this many pixels and crop back to the image size at a random offset;
            ``0``: no crop.
        padding_mode: ``zeros`` or ``reflect`` (see :data:`PADDING_MODES`).
    """

    flip: bool = False
    crop_padding: int = 0
    padding_mode: str = "zeros"

    def __post_init__(self) -> None:
        if not isinstance(self.flip, bool):
            raise ConfigError(f"data.augment.flip must be true or false, got {self.flip!r}; {_EXAMPLE}")
        p = self.crop_padding
        if isinstance(p, bool) or not isinstance(p, (int, np.integer)) or p < 0:
            raise ConfigError(
                f"data.augment.crop_padding must be a non-negative int (pixels of padding on each side; 0: no "
                f"crop), got {p!r}; {_EXAMPLE}"
            )
        if self.padding_mode not in PADDING_MODES:
            raise ConfigError(
                f"data.augment.padding_mode must be one of {', '.join(PADDING_MODES)}, got {self.padding_mode!r}"
            )

    @classmethod
    def from_config(cls, value: Mapping[str, Any] | None) -> ImageAugment | None:
        """The augmentation ``data.augment`` asks for; ``None`` when it is null or switches nothing on.

        Raises:
            ConfigError: not null or a mapping, an unknown key, or a bad value.
        """
        if value is None:
            return None
        if not isinstance(value, Mapping):
            raise ConfigError(
                f"data.augment must be null or a mapping with the keys {', '.join(_KEYS)}, got "
                f"{type(value).__name__} {value!r}; {_EXAMPLE}"
            )
        unknown = sorted(set(value) - set(_KEYS))
        if unknown:
            raise ConfigError(
                f"data.augment has unknown key(s) {', '.join(map(repr, unknown))}; the keys are "
                f"{', '.join(_KEYS)}; {_EXAMPLE}"
            )
        aug = cls(**dict(value))
        return aug if aug.active else None

    @property
    def active(self) -> bool:
        """Whether anything is switched on (an inactive augmentation draws nothing and changes nothing)."""
        return self.flip or self.crop_padding > 0

    def check_image_size(self, height: int, width: int, where: str) -> None:
        """Raise ConfigError unless ``crop_padding`` is smaller than both sides (so a window keeps some image)."""
        if self.crop_padding >= min(height, width):
            raise ConfigError(
                f"data.augment.crop_padding = {self.crop_padding} must be smaller than the image sides of {where} "
                f"({height}x{width}); lower crop_padding (8 is the usual value for 84x84 images)"
            )

    def draw(self, rng: np.random.Generator, n_images: int) -> AugmentDraw:
        """The parameters of ``n_images`` images from ``rng`` (flip bits first, then ``(row, col)`` offsets)."""
        flip = rng.random(n_images) < 0.5 if self.flip else None
        offset = None
        if self.crop_padding > 0:
            span = 2 * self.crop_padding + 1
            offset = np.minimum(rng.random((n_images, 2)) * span, span - 1).astype(np.int64)
        return AugmentDraw(flip=flip, offset=offset, padding=self.crop_padding, padding_mode=self.padding_mode)

    def to_config(self) -> dict[str, Any]:
        """The ``data.augment`` mapping of this augmentation."""
        return {"flip": self.flip, "crop_padding": int(self.crop_padding), "padding_mode": self.padding_mode}


@dataclass(frozen=True, eq=False)
class AugmentDraw:
    """The augmentation of one episode's images, in the order the builders stack them (support rows, then query).

    Attributes:
        flip: bool ``(M,)``: image ``m`` is flipped left-right; ``None``: no flip.
        offset: int64 ``(M, 2)``: the ``(row, col)`` of image ``m``'s window in its padded image, each in
            ``[0, 2 * padding]`` (``padding``: the un-moved image); ``None``: no crop.
        padding: pixels of padding on each side.
        padding_mode: ``zeros`` or ``reflect``.
    """

    flip: np.ndarray | None
    offset: np.ndarray | None
    padding: int
    padding_mode: str

    def apply(self, images: Tensor) -> Tensor:
        """The augmented images, a new tensor of the same shape, dtype and device.

        Args:
            images: ``(M, H, W)`` or ``(M, H, W, C)``, any dtype (the uint8 store layout).
        """
        m, h, w = images.shape[:3]
        dev = images.device
        rows = torch.arange(h, device=dev).expand(m, h)
        cols = torch.arange(w, device=dev).expand(m, w)
        if self.flip is not None:
            flip = torch.from_numpy(self.flip).to(dev)
            cols = torch.where(flip[:, None], w - 1 - cols, cols)
        valid = None
        if self.offset is not None:
            off = torch.from_numpy(self.offset).to(dev) - self.padding
            rows, rows_ok = _source(rows + off[:, :1], h, self.padding_mode)
            cols, cols_ok = _source(cols + off[:, 1:], w, self.padding_mode)
            if rows_ok is not None:
                valid = rows_ok[:, :, None] & cols_ok[:, None, :]  # (M, H, W)
        flat = (torch.arange(m, device=dev)[:, None, None] * h + rows[:, :, None]) * w + cols[:, None, :]
        out = images.reshape(m * h * w, -1).index_select(0, flat.reshape(-1)).reshape(images.shape)
        if valid is not None:
            out = out * (valid if images.dim() == 3 else valid[..., None]).to(out.dtype)
        return out


def _source(coord: Tensor, size: int, mode: str) -> tuple[Tensor, Tensor | None]:
    """Source coordinates in ``[0, size)`` of padded coordinates ``coord``, and which were inside (zeros mode)."""
    if mode == "reflect":  # -1 -> 1, size -> size - 2 (the edge pixel is not repeated); padding < size
        coord = torch.where(coord < 0, -coord, coord)
        return torch.where(coord >= size, 2 * (size - 1) - coord, coord), None
    inside = (coord >= 0) & (coord < size)
    return coord.clamp(0, size - 1), inside
