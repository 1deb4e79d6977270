"""miniImageNet loader (protocol ``ravi``), registered as dataset ``miniimagenet``.

Data: Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016 (arXiv:1606.04080), with the
class split of Ravi & Larochelle, "Optimization as a Model for Few-Shot Learning", ICLR 2017: 64 / 16 / 20
classes of 600 images (train / val / test), 84x84 RGB.

Files live in ``<root>/miniimagenet/`` in any of three layouts (Ravi's CSVs + images, Ren et al.'s pickles,
torchmeta's hdf5); :mod:`episodes.datasets.miniimagenet_formats` reads them and explains how they line up.
When several layouts are present the first of ``pickle``, ``hdf5``, ``csv`` is used, unless ``layout=`` says
otherwise. On disk the validation split may be called ``validation`` (learn2learn); here it is ``val``.

Options (keyword arguments of ``load``):

* ``image_size`` (84): side of the stored images; other sizes are resized from the 84x84 images with
  Pillow's LANCZOS filter.
* ``layout`` (None): force ``"csv"``, ``"pickle"`` or ``"hdf5"``.

Caching: decoding the CSV layout's JPEGs (and any resize) is slow, so its result is cached as uint8 through
:mod:`episodes.cache`, keyed by the source files' fingerprint and the options. The pickle and hdf5 layouts
already hold decoded 84x84 arrays and are read directly (a cache would only double the disk use).

``ClassSplit.fingerprint`` hashes the decoded content (class names, image ids and pixels, class by class),
the split and the options, not the files: the pickle and hdf5 layouts of the same data give the same
fingerprint, so a fixed-episode file made from one binds to the other. (The CSV layout's image ids differ,
hence so does its fingerprint.)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from episodes.cache import fingerprint_sources, load_cached, make_key, save_cached
from episodes.data_root import explain_data_root
from episodes.datasets import DATASETS
from episodes.datasets.miniimagenet_checksums import check_csvs, verify_images
from episodes.datasets.miniimagenet_formats import (
    LAYOUTS,
    NATIVE_SIZE,
    RawSplit,
    count_layout,
    expected_files,
    find_layouts,
    read_layout,
)
from episodes.datasets.miniimagenet_formats import _decode as _decode_image  # the CSV layout's JPEG decoder
from episodes.split import ClassSplit
from fewshot.errors import ConfigError, DataError

__all__ = ["MiniImageNet", "SPLITS"]

SPLITS = ("train", "val", "test")
LOADER_VERSION = 1
_GET_DATA = (
    "miniImageNet cannot be downloaded automatically; put one of its three layouts in <root>/miniimagenet/: "
    "Ravi & Larochelle's {train,val,test}.csv + images/, the mini-imagenet-cache-{split}.pkl pickles, or "
    "torchmeta's {split}_data.hdf5 + {split}_labels.json"
)


def _check_split(protocol: str, split: str) -> str:
    if protocol != "ravi":
        raise ConfigError(f"unknown miniImageNet protocol {protocol!r}; expected 'ravi'")
    split = "val" if split == "validation" else split
    if split not in SPLITS:
        raise ConfigError(f"unknown miniImageNet split {split!r}; expected one of {', '.join(SPLITS)}")
    return split


def _check_options(image_size: Any, layout: Any) -> None:
    if isinstance(image_size, bool) or not isinstance(image_size, (int, np.integer)) or not 8 <= image_size <= 1024:
        raise ConfigError(f"image_size must be an int in 8..1024, got {image_size!r}; 84 is the standard size")
    if layout is not None and layout not in LAYOUTS:
        raise ConfigError(f"layout must be one of {', '.join(LAYOUTS)} (or None to detect it), got {layout!r}")


def _folder(data_root: str | Path | None) -> Path:
    root = explain_data_root(data_root, "miniimagenet")
    folder = root.path / "miniimagenet"
    if not folder.is_dir():
        raise DataError(
            f"no miniimagenet/ folder in the data root {root.path} ({root.reason}); {_GET_DATA}, "
            "and point --data-root (or $FEWSHOT_DATA) at <root>"
        )
    return folder


def _choose(folder: Path, split: str, layout: str | None) -> tuple[str, list[Path]]:
    found = find_layouts(folder, split)
    if layout is not None:
        if layout not in found:
            raise DataError(
                f"no {layout} layout of the {split!r} split in {folder} (found: {', '.join(found) or 'none'})"
            )
        return layout, found[layout]
    if not found:
        raise DataError(f"no file of the {split!r} split in {folder}; expected one of: {expected_files(folder, split)}")
    name = next(iter(found))
    return name, found[name]


def _resize(images: np.ndarray, size: int) -> np.ndarray:
    out = np.empty((len(images), size, size, 3), dtype=np.uint8)
    for i, img in enumerate(images):
        out[i] = np.asarray(Image.fromarray(img).resize((size, size), Image.Resampling.LANCZOS))
    return out


def _read(layout: str, paths: list[Path], split: str, image_size: int) -> RawSplit:
    """The split's images at ``image_size``: read directly, or through the decoded cache (see module doc)."""
    if layout != "csv" and image_size == NATIVE_SIZE:
        return read_layout(layout, paths)
    key = make_key("miniimagenet", LOADER_VERSION, layout, split, image_size, fingerprint_sources(paths))
    found = load_cached("miniimagenet", key)
    if found is not None:
        images, meta = found
        try:
            class_images = [np.asarray(ix, dtype=np.int64) for ix in meta["class_images"]]
            if len(meta["image_ids"]) == len(images) and len(class_images) == len(meta["wnids"]):
                return RawSplit(layout, images, list(meta["image_ids"]), list(meta["wnids"]), class_images, paths)
        except (KeyError, TypeError, ValueError):
            pass  # a malformed description: rebuild below
    raw = read_layout(layout, paths)
    images = raw.images if image_size == NATIVE_SIZE else _resize(raw.images, image_size)
    meta = {"image_ids": raw.image_ids, "wnids": raw.wnids, "class_images": [ix.tolist() for ix in raw.class_images]}
    save_cached("miniimagenet", key, images, meta)
    return RawSplit(layout, images, raw.image_ids, raw.wnids, raw.class_images, paths)


def _content_digest(raw: RawSplit) -> str:
    h = hashlib.sha256()
    for wnid, rows in zip(raw.wnids, raw.class_images, strict=True):
        h.update(json.dumps([wnid, [raw.image_ids[r] for r in rows.tolist()]]).encode())
        h.update(np.ascontiguousarray(raw.images[rows]).data)
    return h.hexdigest()


@DATASETS.register("miniimagenet")
class MiniImageNet:
    """miniImageNet, 84x84 RGB, Ravi & Larochelle's 64/16/20-class split (protocol ``ravi``); csv/pickle/hdf5.

    Example:
        >>> from episodes.datasets import load_split
        >>> split = load_split("miniimagenet", "ravi", "test")  # doctest: +SKIP
        >>> split.n_classes, split.images.shape  # doctest: +SKIP
        (20, (12000, 84, 84, 3))
    """

    protocols = ("ravi",)

    @staticmethod
    def splits(protocol: str) -> tuple[str, ...]:
        _check_split(protocol, "train")
        return SPLITS

    @classmethod
    def load(
        cls,
        protocol: str = "ravi",
        split: str = "train",
        data_root: str | Path | None = None,
        *,
        image_size: int = NATIVE_SIZE,
        layout: str | None = None,
    ) -> ClassSplit:
        """Load one split as a :class:`~episodes.split.ClassSplit` with uint8 ``(n, S, S, 3)`` images.

        Args:
            protocol: ``"ravi"``.
            split: ``"train"``, ``"val"`` (or ``"validation"``) or ``"test"``.
            data_root: the data root; None resolves it (see :mod:`episodes.data_root`).
            image_size: side ``S`` of the stored images.
            layout: ``"csv"``, ``"pickle"``, ``"hdf5"``, or None to take the first present.

        Raises:
            ConfigError: unknown protocol, split or option value.
            DataError: files missing or corrupt, an image of the CSV missing, a pickle of the wrong image
                size, or h5py missing for the hdf5 layout (each message names the file).
        """
        split = _check_split(protocol, split)
        _check_options(image_size, layout)
        layout, paths = _choose(_folder(data_root), split, layout)
        raw = _read(layout, paths, split, int(image_size))
        options = {"image_size": int(image_size)}
        fingerprint = {
            "dataset": "miniimagenet",
            "protocol": protocol,
            "split": split,
            "options": options,
            "loader_version": LOADER_VERSION,
            "content": _content_digest(raw),
        }
        return ClassSplit(
            dataset="miniimagenet",
            protocol=protocol,
            split=split,
            images=raw.images,
            image_ids=raw.image_ids,
            class_names=raw.wnids,
            class_images=raw.class_images,
            class_rotation=np.zeros(len(raw.wnids), dtype=np.int64),
            class_groups=[""] * len(raw.wnids),
            fingerprint=hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest(),
            meta={**options, "layout": layout, "rotation": "none"},
        )

    @staticmethod
    def decode_file(file: str | Path, /, *, image_size: int = NATIVE_SIZE, **_selection: Any) -> np.ndarray:
        """One image file preprocessed exactly as the stored miniImageNet images (a trained model's own input).

        RGB, resized to 84x84 as the CSV layout's JPEGs are, then to ``image_size`` as the split is.
        ``_selection`` takes the options that choose files, not pixels (``layout``), and ignores them.

        Returns:
            uint8 ``(image_size, image_size, 3)``.

        Raises:
            DataError: the file is not a readable image (the message names it).
        """
        _check_options(image_size, None)
        image = _decode_image(Path(file))
        return image if image_size == NATIVE_SIZE else _resize(image[None], image_size)[0]

    @classmethod
    def info(cls, data_root: str | Path | None = None, *, verify: bool = False, **options: Any) -> dict:
        """What is on disk: per split, the layouts found and the classes and images of the one used; the CSVs'
        SHA-256 against Ravi & Larochelle's files; with ``verify``, every image against the data's tree digest.

        Decodes no image (but a pickle is loaded whole: a second or two for the train split). ``verify`` reads
        and hashes all 60,000 images (about 10 s here).

        Returns:
            ``{"dataset", "present": True, "folder", "csv_sha256": {split: "ok" | "differs (<sha256>)"},
            ["images_verified": {...}], "protocols": {"ravi": {"splits": {split: {"layout", "layouts_found",
            "classes", "images"} or {"error"}}}}}``; if absent, ``{"dataset", "present": False, "reason"}``.
            ``images_verified`` (with ``verify``) holds the image count, ``tree_digest`` ("ok" or "differs
            (<digest>)") and, where not empty, the ``missing``, ``extra`` and ``changed`` file names.
        """
        try:
            folder = _folder(data_root)
        except DataError as exc:
            return {"dataset": "miniimagenet", "present": False, "reason": str(exc)}
        splits: dict[str, Any] = {}
        for split in SPLITS:
            found = find_layouts(folder, split)
            try:
                layout, paths = _choose(folder, split, options.get("layout"))
                n_classes, n_images = count_layout(layout, paths)
                splits[split] = {
                    "layout": layout,
                    "layouts_found": list(found),
                    "classes": n_classes,
                    "images": n_images,
                }
            except DataError as exc:
                splits[split] = {"layouts_found": list(found), "error": str(exc)}
        out: dict[str, Any] = {"dataset": "miniimagenet", "present": True, "folder": str(folder)}
        csvs = check_csvs(folder)
        if csvs:
            out["csv_sha256"] = {k: "ok" if v["ok"] else f"differs ({v['sha256']})" for k, v in csvs.items()}
        if verify:
            found = verify_images(folder)
            report: dict[str, Any] = {
                "images": found["images"],
                "tree_digest": "ok" if found["ok"] else f"differs ({found['tree_digest']})",
            }
            for key in ("missing", "extra", "changed"):
                if found[key]:
                    names = found[key]
                    report[key] = ", ".join(names[:10]) + (f" (+{len(names) - 10} more)" if len(names) > 10 else "")
            out["images_verified"] = report
        out["protocols"] = {"ravi": {"splits": splits}}
        return out
