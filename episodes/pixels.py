"""From stored uint8 pixels to the float32 tensor a model sees: ``x / 255``, optionally standardized per channel.

Every path that turns stored images into model input (the episodic sampler, fixed evaluation episodes, and the
commands that run a trained model on a user's images, :mod:`fewshot.inference`) goes through
:func:`images_to_float`, so identical pixels always give identical tensors and preprocessing is defined once.
Per-channel standardization is set by the config key ``data.normalize`` and travels with the split
(:attr:`episodes.split.ClassSplit.pixel_norm`); it is not part of the split's fingerprint, because it changes the
model's input, not which images an episode holds.

The miniImageNet configs use ImageNet's per-channel statistics (``mean (0.485, 0.456, 0.406)``, ``std (0.229,
0.224, 0.225)``, the torchvision convention), as Chen et al. ("A Closer Look at Few-shot Classification", ICLR
2019) and Meta-Baseline (Chen et al., ICCV 2021) do for this dataset.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from fewshot.errors import ConfigError

__all__ = ["IMAGENET_NORM", "PixelNorm", "images_to_float", "to_float"]


@dataclass(frozen=True)
class PixelNorm:
    """Per-channel standardization ``(x / 255 − mean) / std`` of images in [0, 1].

    Attributes:
        mean: one value per channel, on the [0, 1] scale.
        std: one positive value per channel, on the [0, 1] scale.
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __post_init__(self) -> None:
        if len(self.mean) != len(self.std) or not self.mean:
            raise ConfigError(
                f"data.normalize needs one mean and one std per channel, got {len(self.mean)} mean(s) and "
                f"{len(self.std)} std(s); e.g. {{mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}}"
            )
        if not all(math.isfinite(m) for m in self.mean) or not all(math.isfinite(s) and s > 0 for s in self.std):
            raise ConfigError(
                f"data.normalize needs finite means and finite stds > 0, got mean={list(self.mean)}, "
                f"std={list(self.std)}"
            )

    @classmethod
    def from_config(cls, value: Mapping[str, Any] | None) -> PixelNorm | None:
        """The normalization a config's ``data.normalize`` asks for (``None``: plain ``x / 255``).

        Raises:
            ConfigError: not a mapping with exactly the keys ``mean`` and ``std``, each a list of numbers.
        """
        if value is None:
            return None
        if not isinstance(value, Mapping) or set(value) != {"mean", "std"}:
            got = sorted(value) if isinstance(value, Mapping) else type(value).__name__
            raise ConfigError(
                f"data.normalize must be null or a mapping with the keys 'mean' and 'std', got {got!r}; e.g. "
                "{mean: [0.485, 0.456, 0.406], std: [0.229, 0.224, 0.225]}"
            )
        return cls(_numbers("mean", value["mean"]), _numbers("std", value["std"]))

    def check_channels(self, channels: int, where: str) -> None:
        """Raise ConfigError unless there is one mean/std per channel of the ``channels``-channel images."""
        if len(self.mean) != channels:
            raise ConfigError(
                f"data.normalize has {len(self.mean)} channel(s) but {where} has {channels}-channel images; give "
                f"one mean and one std per channel, or set data.normalize=null"
            )

    def to_config(self) -> dict[str, list[float]]:
        """The ``data.normalize`` mapping this object was made from."""
        return {"mean": list(self.mean), "std": list(self.std)}


def _numbers(key: str, value: Any) -> tuple[float, ...]:
    ok = isinstance(value, Sequence) and not isinstance(value, str)
    ok = ok and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    if not ok:
        raise ConfigError(f"data.normalize.{key} must be a list of numbers (one per channel), got {value!r}")
    return tuple(float(v) for v in value)


IMAGENET_NORM = PixelNorm(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def to_float(raw: Tensor, norm: PixelNorm | None = None) -> Tensor:
    """Model input from stored pixels, in one pass over the images.

    Args:
        raw: uint8 images ``(M, C, H, W)`` (any strides, e.g. a permuted NHWC store).
        norm: per-channel standardization, or ``None`` for ``raw / 255``.

    Returns:
        A new contiguous float32 tensor ``(M, C, H, W)``: ``raw / 255``, or ``(raw / 255 − mean) / std``
        computed as ``raw · (1 / (255·std)) + (−mean / std)`` in one fused multiply-add.
    """
    x = torch.empty(raw.shape, dtype=torch.float32, device=raw.device)  # contiguous NCHW, whatever the layout
    if norm is None:
        return torch.div(raw, 255.0, out=x)
    norm.check_channels(raw.shape[1], "the dataset")
    std = torch.tensor(norm.std, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).to(torch.float32).view(-1, 1, 1)
    shift = (-torch.tensor(norm.mean, dtype=torch.float64) / std).to(torch.float32).view(-1, 1, 1)
    return torch.addcmul(shift.to(raw.device), raw, scale.to(raw.device), out=x)


def images_to_float(images: np.ndarray, norm: PixelNorm | None = None) -> Tensor:
    """Model input for images in the store's layout (the one conversion of every image a model sees).

    Args:
        images: uint8 ``(M, H, W)`` (grey) or ``(M, H, W, C)``, as in :attr:`episodes.split.ClassSplit.images`.
        norm: per-channel standardization (the split's ``pixel_norm``), or ``None`` for ``images / 255``.

    Returns:
        float32 ``(M, C, H, W)``, contiguous NCHW whatever the store's layout (see :func:`to_float`).
    """
    raw = torch.from_numpy(images)
    return to_float(raw.unsqueeze(1) if images.ndim == 3 else raw.permute(0, 3, 1, 2), norm)
