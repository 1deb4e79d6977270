"""Generic image-folder loader for your own data, registered as dataset ``imagefolder`` (protocol ``folder``).

Where the data is: the folder ``path=`` if given, else ``<data root>/<name>`` (``name`` defaults to
``imagefolder``). Two layouts:

* **split folders**: ``<folder>/{train,val,test}/<class>/<image>``: the splits are the sub-folders;
* **one folder of classes**: ``<folder>/<class>/<image>``: the classes are split into train / val / test by
  ``split_fractions`` (default ``(0.64, 0.16, 0.20)``, miniImageNet's 64/16/20), deterministically: classes are
  ordered by ``sha256(f"{seed}/{class name}")`` (``seed`` option, default 0; independent of numpy and of
  the file system), and with ``n`` classes the first ``round(n * f_train)`` are train, the next
  ``round(n * (f_train + f_val)) - round(n * f_train)`` are val, the rest test. Adding a class moves at
  most a boundary class, never reshuffles the others.

Images are ``*.png``, ``*.jpg``, ``*.jpeg`` (any case) directly inside a class folder, listed in sorted name
order (never file-system order); hidden files are skipped, and a class folder without images is skipped with
a warning. Each image is converted to ``mode`` (``"RGB"``, the default, or ``"L"`` for grey) and, if
``image_size`` is given, resized to ``image_size`` x ``image_size`` with Pillow's LANCZOS filter; without
``image_size`` all images must already have one size. Class names are the folder names, image ids
``<class>/<file name>``. Decoded arrays are cached through :mod:`episodes.cache` (keyed by the files' content
and the options); the fingerprint hashes the decoded content, the options and the split rule.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from episodes.cache import fingerprint_sources, load_cached, make_key, save_cached
from episodes.data_root import explain_data_root
from episodes.datasets import DATASETS
from episodes.split import ClassSplit
from fewshot.errors import ConfigError, DataError

__all__ = ["DEFAULT_FRACTIONS", "EXTENSIONS", "ImageFolder", "SPLITS"]

SPLITS = ("train", "val", "test")
EXTENSIONS = (".png", ".jpg", ".jpeg")
DEFAULT_FRACTIONS = (0.64, 0.16, 0.20)
LOADER_VERSION = 1


def _check_options(image_size: Any, mode: Any, split_fractions: Any, seed: Any) -> tuple[float, float, float]:
    if image_size is not None and (
        isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not 1 <= image_size <= 4096
    ):
        raise ConfigError(f"image_size must be None or an int in 1..4096, got {image_size!r}")
    if mode not in ("L", "RGB"):
        raise ConfigError(f"mode must be 'L' (grey) or 'RGB', got {mode!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"seed must be an int, got {seed!r}")
    if isinstance(split_fractions, dict):
        split_fractions = [split_fractions.get(s, 0.0) for s in SPLITS]
    ok = isinstance(split_fractions, Sequence) and len(split_fractions) == 3
    ok = ok and all(isinstance(f, (int, float)) and not isinstance(f, bool) and f >= 0 for f in split_fractions)
    if not ok or abs(sum(split_fractions) - 1.0) > 1e-6:
        raise ConfigError(
            f"split_fractions must be three non-negative numbers (train, val, test) summing to 1, got "
            f"{split_fractions!r}; e.g. (0.64, 0.16, 0.20)"
        )
    return tuple(float(f) for f in split_fractions)  # type: ignore[return-value]


def _folder(data_root: str | Path | None, path: str | Path | None, name: str) -> Path:
    if path is not None:
        folder = Path(path).expanduser().absolute()
        if not folder.is_dir():
            raise DataError(f"the image folder {str(folder)!r} given by path= does not exist; check the path")
        return folder
    root = explain_data_root(data_root, name)
    folder = root.path / name
    if not folder.is_dir():
        raise DataError(
            f"no {name}/ folder in the data root {root.path} ({root.reason}); put your images in "
            f"{folder}/<class>/*.png (or {folder}/train/<class>/...), or pass path=<folder>"
        )
    return folder


def _visible_dirs(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)


def _images_of(folder: Path) -> list[Path]:
    files = (p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted((p for p in files if p.suffix.lower() in EXTENSIONS), key=lambda p: p.name)


def _assign(names: list[str], fractions: tuple[float, float, float], seed: int) -> dict[str, list[str]]:
    """Class-level split (see the module docstring): ``{split: sorted class names}``."""
    order = sorted(names, key=lambda n: hashlib.sha256(f"{seed}/{n}".encode()).hexdigest())
    n = len(order)
    a = round(n * fractions[0])
    b = round(n * (fractions[0] + fractions[1]))
    return {"train": sorted(order[:a]), "val": sorted(order[a:b]), "test": sorted(order[b:])}


def _class_folders(folder: Path, split: str, fractions: tuple, seed: int) -> tuple[list[Path], dict]:
    """The class folders of ``split`` (sorted by name) and a description of the split rule."""
    subs = {p.name: p for p in _visible_dirs(folder)}
    if any(s in subs for s in SPLITS):
        if split not in subs:
            present = ", ".join(s for s in SPLITS if s in subs)
            raise DataError(f"{folder} has split folders ({present}) but no {split}/; add {folder / split}/<class>/...")
        return _visible_dirs(subs[split]), {"split_source": "folders"}
    if not subs:
        raise DataError(f"{folder} holds no class folders; expected {folder}/<class>/*.png")
    chosen = _assign(sorted(subs), fractions, seed)[split]
    if not chosen:
        raise DataError(
            f"split_fractions {fractions} leave no class of the {len(subs)} in {folder} for split {split!r}; "
            "raise its fraction or add classes"
        )
    return [subs[c] for c in chosen], {"split_source": "fractions", "split_fractions": list(fractions), "seed": seed}


def _decode(path: Path, mode: str, image_size: int | None) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert(mode)
            if image_size is not None and im.size != (image_size, image_size):
                im = im.resize((image_size, image_size), Image.Resampling.LANCZOS)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}); remove or replace it") from exc


def _build(classes: list[tuple[str, list[Path]]], mode: str, image_size: int | None) -> np.ndarray:
    arrays, first = [], None
    for _, files in classes:
        for f in files:
            img = _decode(f, mode, image_size)
            if first is None:
                first = (f, img.shape)
            elif img.shape != first[1]:
                raise DataError(
                    f"images differ in size: {first[0]} is {first[1][1]}x{first[1][0]} but {f} is "
                    f"{img.shape[1]}x{img.shape[0]}; pass image_size=<side> to resize them all"
                )
            arrays.append(img)
    return np.stack(arrays)


@DATASETS.register("imagefolder")
class ImageFolder:
    """Your own images, ``<folder>/[split/]<class>/*.png|jpg``, protocol ``folder`` (module docstring: details).

    Example:
        >>> from episodes.datasets import load_split
        >>> split = load_split("imagefolder", "folder", "test", path="~/my_data", image_size=84)  # doctest: +SKIP
    """

    protocols = ("folder",)

    @staticmethod
    def splits(protocol: str) -> tuple[str, ...]:
        if protocol != "folder":
            raise ConfigError(f"unknown imagefolder protocol {protocol!r}; expected 'folder'")
        return SPLITS

    @classmethod
    def load(
        cls,
        protocol: str = "folder",
        split: str = "train",
        data_root: str | Path | None = None,
        *,
        path: str | Path | None = None,
        name: str = "imagefolder",
        image_size: int | None = None,
        mode: str = "RGB",
        split_fractions: Sequence[float] | dict = DEFAULT_FRACTIONS,
        seed: int = 0,
    ) -> ClassSplit:
        """Load one split as a :class:`~episodes.split.ClassSplit`.

        Args:
            protocol: ``"folder"``.
            split: ``"train"``, ``"val"`` or ``"test"``.
            data_root: the data root (the images are in ``<data root>/<name>``); None resolves it.
            path: the image folder itself (overrides ``data_root``/``name``).
            name: sub-folder of the data root.
            image_size: resize to this square side (LANCZOS); None keeps the (common) size.
            mode: ``"RGB"`` (images ``(n, H, W, 3)``) or ``"L"`` (grey, ``(n, H, W)``).
            split_fractions: train/val/test fractions of the classes, for a folder without split folders.
            seed: seed of the class-level split.

        Raises:
            ConfigError: an option is invalid.
            DataError: the folder, the split or the images are missing or unreadable, or sizes differ.
        """
        cls.splits(protocol)
        if split not in SPLITS:
            raise ConfigError(f"unknown imagefolder split {split!r}; expected one of {', '.join(SPLITS)}")
        fractions = _check_options(image_size, mode, split_fractions, seed)
        folder = _folder(data_root, path, name)
        class_dirs, rule = _class_folders(folder, split, fractions, int(seed))
        classes = []
        for d in class_dirs:
            files = _images_of(d)
            if files:
                classes.append((d.name, files))
            else:
                warnings.warn(f"class folder {d} holds no {'/'.join(EXTENSIONS)} image; skipping it", stacklevel=2)
        if not classes:
            raise DataError(f"no images in the {split!r} classes of {folder}; expected <class>/*.png|jpg|jpeg")
        options = {"image_size": None if image_size is None else int(image_size), "mode": mode}
        listing = [[c, [f.name for f in files]] for c, files in classes]
        key = make_key("imagefolder", LOADER_VERSION, options, listing, fingerprint_sources([d for d in class_dirs]))
        found = load_cached("imagefolder", key)
        images = found[0] if found is not None and found[1].get("listing") == listing else None
        if images is None:
            images = _build(classes, mode, options["image_size"])
            save_cached("imagefolder", key, images, {"listing": listing, "folder": str(folder)})
        ids = [f"{c}/{f.name}" for c, files in classes for f in files]
        sizes = [len(files) for _, files in classes]
        starts = np.cumsum([0, *sizes])
        class_images = [np.arange(starts[j], starts[j + 1], dtype=np.int64) for j in range(len(classes))]
        content = hashlib.sha256(json.dumps(ids).encode())
        content.update(np.ascontiguousarray(images).data)
        fingerprint = {"dataset": "imagefolder", "protocol": protocol, "split": split, "options": options, **rule}
        fingerprint["content"] = content.hexdigest()
        return ClassSplit(
            dataset="imagefolder",
            protocol=protocol,
            split=split,
            images=images,
            image_ids=ids,
            class_names=[c for c, _ in classes],
            class_images=class_images,
            class_rotation=np.zeros(len(classes), dtype=np.int64),
            class_groups=[""] * len(classes),
            fingerprint=hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest(),
            meta={**options, **rule, "rotation": "none"},
        )

    @staticmethod
    def decode_file(
        file: str | Path, /, *, image_size: int | None = None, mode: str = "RGB", **_selection: Any
    ) -> np.ndarray:
        """One image file preprocessed exactly as the split's images (a trained model's own input).

        ``_selection`` takes the options that choose classes, not pixels (``path``, ``name``, ``split_fractions``,
        ``seed``), and ignores them.

        Returns:
            uint8 ``(H, W)`` for ``mode="L"``, ``(H, W, 3)`` for ``"RGB"``; ``image_size`` square if given.

        Raises:
            DataError: the file is not a readable image (the message names it).
        """
        _check_options(image_size, mode, DEFAULT_FRACTIONS, 0)
        return _decode(Path(file), mode, image_size)

    @classmethod
    def info(cls, data_root: str | Path | None = None, **options: Any) -> dict:
        """Classes and images per split, without decoding (``path``, ``name``, ``split_fractions``, ``seed``).

        Returns:
            ``{"dataset", "present": True, "folder", "protocols": {"folder": {"split_source", "splits": {split:
            {"classes", "images"} or {"error"}}}}}``; if absent, ``{"dataset", "present": False, "reason"}``.
        """
        name = options.get("name", "imagefolder")
        try:
            folder = _folder(data_root, options.get("path"), name)
            fractions = _check_options(None, "RGB", options.get("split_fractions", DEFAULT_FRACTIONS), 0)
        except (DataError, ConfigError) as exc:
            return {"dataset": "imagefolder", "present": False, "reason": str(exc)}
        splits: dict[str, Any] = {}
        source = None
        for split in SPLITS:
            try:
                dirs, rule = _class_folders(folder, split, fractions, int(options.get("seed", 0)))
                source = rule["split_source"]
                counts = [len(_images_of(d)) for d in dirs]
                splits[split] = {"classes": sum(c > 0 for c in counts), "images": sum(counts)}
            except DataError as exc:
                splits[split] = {"error": str(exc)}
        out = {"split_source": source, "splits": splits}
        return {"dataset": "imagefolder", "present": True, "folder": str(folder), "protocols": {"folder": out}}
