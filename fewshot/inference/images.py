"""A user's own image files, listed and turned into exactly the tensors a trained run's model was trained on.

Listing follows the ``imagefolder`` dataset's rules (:mod:`episodes.datasets.imagefolder`): ``*.png``, ``*.jpg``,
``*.jpeg`` (any case), hidden files skipped, sorted by name, never file-system order; a class is a sub-folder.

Preprocessing is never re-implemented here: each file goes through the run's dataset's own
``decode_file(path, **cfg.data.options)`` (size, grey/RGB, Omniglot's reading of strokes and inversion, the
resize filter: the pixels its stored images got), then through :func:`episodes.pixels.images_to_float`, the
conversion every training and evaluation episode goes through. Before that, each file is checked against the
model's input: a colour image for a grey model, transparent pixels, an unreadable file or a size the model cannot
take is refused with an error naming the file (a silent conversion would give confident nonsense).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from episodes.datasets import get_dataset
from episodes.datasets.imagefolder import EXTENSIONS, _images_of, _visible_dirs
from episodes.pixels import PixelNorm, images_to_float
from fewshot.errors import ConfigError, DataError

__all__ = ["ImageList", "class_folders", "image_files", "load_images"]

PathLike = str | Path


@dataclass(frozen=True)
class ImageList:
    """Image files and the class folder each came from.

    Attributes:
        files: the image files, in order.
        folders: for each file, the name of its class folder (``""`` for a file given directly).
    """

    files: tuple[Path, ...]
    folders: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.files)


def class_folders(support: PathLike | Mapping[str, Sequence[PathLike]]) -> ImageList:
    """The labelled images of a support set: ``DIR/<class>/<image>``, or a mapping ``{class: [files]}``.

    Classes are in sorted name order (the label order of every episode); files in a folder in sorted name order.

    Raises:
        DataError: the folder does not exist, holds no class folder, or a class has no image.
    """
    if isinstance(support, Mapping):
        classes = {str(c): [Path(f) for f in files] for c, files in support.items()}
        where = "the support mapping"
    else:
        folder = Path(support)
        if not folder.is_dir():
            raise DataError(f"support folder {str(folder)!r} does not exist; pass DIR with one sub-folder per class")
        classes = {d.name: _images_of(d) for d in _visible_dirs(folder)}
        where = f"support folder {str(folder)!r}"
    if not classes:
        raise DataError(f"{where} holds no class; expected DIR/<class>/*{'|*'.join(EXTENSIONS)} with a few images each")
    empty = [c for c, files in classes.items() if not files]
    if empty:
        raise DataError(
            f"{where}: class(es) {', '.join(sorted(empty))} hold no image ({'/'.join(EXTENSIONS)}); every class "
            "needs at least one labelled image"
        )
    names = sorted(classes)
    return ImageList(
        files=tuple(f for c in names for f in classes[c]), folders=tuple(c for c in names for _ in classes[c])
    )


def image_files(images: PathLike | Sequence[PathLike]) -> ImageList:
    """Unlabelled images: one file, a list of files, or a folder (its images, then those of its sub-folders).

    A folder's own images come first (folder ``""``), then each sub-folder's in sorted name order (folder = the
    sub-folder's name, e.g. the true class when you hold one out).

    Raises:
        DataError: a path does not exist, or no image was found.
    """
    sources = [images] if isinstance(images, (str, Path)) else list(images)
    files: list[Path] = []
    folders: list[str] = []
    for source in map(Path, sources):
        if source.is_dir():
            for f in _images_of(source):
                files.append(f)
                folders.append("")
            for d in _visible_dirs(source):
                for f in _images_of(d):
                    files.append(f)
                    folders.append(d.name)
        elif source.is_file():
            files.append(source)
            folders.append("")
        else:
            raise DataError(f"{str(source)!r} does not exist; pass image files or a folder of images")
    if not files:
        raise DataError(f"no image ({'/'.join(EXTENSIONS)}) in {', '.join(map(str, sources)) or 'an empty list'}")
    return ImageList(files=tuple(files), folders=tuple(folders))


def _check_channels(path: Path, channels: int) -> None:
    """Refuse a file the model cannot take without losing or inventing information (see the module docstring)."""
    try:
        with Image.open(path) as im:
            im.load()
            has_alpha = "A" in im.getbands() or "transparency" in im.info
            rgba = np.asarray(im.convert("RGBA"))
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}); remove or replace it") from exc
    if has_alpha and int(rgba[..., 3].min()) < 255:
        raise DataError(
            f"{path} has transparent pixels; the model takes opaque images: flatten it onto a background first"
        )
    rgb = rgba[..., :3]
    if channels == 1 and not (np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 0], rgb[..., 2])):
        raise DataError(
            f"{path} is a colour image, but the model was trained on grey images (1 channel); convert it to grey "
            "first (PIL: Image.convert('L')) if that is what you mean"
        )


def load_images(files: Sequence[Path], cfg: Any, image_shape: Sequence[int]) -> torch.Tensor:
    """``files`` preprocessed as the run's training data, as one float32 ``(len(files), C, H, W)`` batch.

    Args:
        files: image files.
        cfg: the run's :class:`~fewshot.config.schema.ExperimentConfig` (``data.dataset`` and ``data.options``).
        image_shape: ``(C, H, W)`` the model was trained on.

    Raises:
        DataError: a file is unreadable, has the wrong channels or, after preprocessing, the wrong size.
        ConfigError: the run's dataset cannot preprocess single files.
    """
    dataset = get_dataset(cfg.data.dataset)
    decode = getattr(dataset, "decode_file", None)
    if decode is None:
        raise ConfigError(
            f"dataset {cfg.data.dataset!r} has no decode_file: it cannot preprocess single image files; add one to "
            "its loader class (see episodes/datasets/__init__.py)"
        )
    c, h, w = (int(v) for v in image_shape)
    arrays = []
    for path in files:
        _check_channels(Path(path), c)
        img = decode(path, **cfg.data.options)
        shape = (1, *img.shape) if img.ndim == 2 else (img.shape[2], *img.shape[:2])
        if shape != (c, h, w):
            raise DataError(
                f"{path} becomes {shape[1]}x{shape[2]} with {shape[0]} channel(s) after the run's preprocessing "
                f"(data.options {dict(cfg.data.options)}), but the model takes {h}x{w} with {c}; resize it to {h}x{w}"
            )
        arrays.append(img)
    if not arrays:
        raise DataError("no image to load; pass at least one file")
    return images_to_float(np.stack(arrays), PixelNorm.from_config(cfg.data.normalize))
