"""Readers for the three on-disk layouts of miniImageNet, each giving the same `RawSplit`.

Layouts, all under ``<root>/miniimagenet/`` (facts from the writers' code, see ``docs`` protocols §10.2):

* ``csv``: Ravi & Larochelle's split files ``{split}.csv`` (header ``filename,label``, rows like
  ``n0153282900000005.jpg,n01532829``) with the images in ``images/<filename>`` (or ``images/<label>/<filename>``,
  mmfewshot's variant). Each image is converted to RGB and, if it is not 84x84, resized to 84x84 with
  Pillow's LANCZOS filter.
* ``pickle``: Ren et al.'s caches ``mini-imagenet-cache-{split}.pkl`` (learn2learn names the validation file
  ``...-validation.pkl``): a dict with ``image_data`` uint8 ``(N, 84, 84, 3)`` and ``class_dict``
  ``{wnid: [row indices in CSV order]}``. Python-2 pickles (byte-string keys, arrays needing
  ``encoding="latin1"``) are read too.
* ``hdf5``: torchmeta's ``{split}_data.hdf5`` (group ``datasets``, one uint8 ``(n, 84, 84, 3)`` dataset per
  wnid, rows in CSV order) and ``{split}_labels.json`` (the sorted wnid list). Needs ``h5py`` (imported
  lazily).

How the layouts line up: classes are sorted by wnid; inside a class the images keep the CSV row order, which
is the order of the pickle's ``class_dict`` lists and of the rows of the hdf5 dataset. So position ``p`` of
class ``w`` is the same picture in every layout. Image ids are the file-name stem in the ``csv`` layout
(``n0153282900000005``; the 8 digits are an index into the original ImageNet subset, not the position) and
``w/pppp`` (zero-padded position, ``n01532829/0005``) in the other two.
"""

from __future__ import annotations

import csv
import importlib
import json
import pickle
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import numpy as np
from PIL import Image, UnidentifiedImageError

from fewshot.errors import DataError

__all__ = ["LAYOUTS", "NATIVE_SIZE", "RawSplit", "count_layout", "expected_files", "find_layouts", "read_layout"]

NATIVE_SIZE = 84
LAYOUTS = ("pickle", "hdf5", "csv")  # preference order when several are present (already-decoded first)
_DISK_NAMES = {"train": ("train",), "val": ("val", "validation"), "test": ("test",)}


@dataclass(frozen=True)
class RawSplit:
    """One split as read from disk, before any resizing.

    Attributes:
        layout: ``"csv"``, ``"pickle"`` or ``"hdf5"``.
        images: uint8 ``(n, 84, 84, 3)``, RGB.
        image_ids: one id per row of ``images`` (see the module docstring).
        wnids: the class names, sorted.
        class_images: per class, int64 row indices into ``images`` in CSV order.
        sources: the files read (for cache keys and messages).
    """

    layout: str
    images: np.ndarray
    image_ids: list[str]
    wnids: list[str]
    class_images: list[np.ndarray]
    sources: list[Path]


def _candidates(folder: Path, split: str) -> dict[str, list[Path]]:
    """The files each layout would read for ``split`` (first existing variant), whether they exist or not."""
    names = _DISK_NAMES[split]

    def first(pattern: str) -> Path:
        paths = [folder / pattern.format(n) for n in names]
        return next((p for p in paths if p.exists()), paths[0])

    return {
        "pickle": [first("mini-imagenet-cache-{}.pkl")],
        "hdf5": [first("{}_data.hdf5"), first("{}_labels.json")],
        "csv": [first("{}.csv"), folder / "images"],
    }


def find_layouts(folder: Path, split: str) -> dict[str, list[Path]]:
    """The layouts whose files for ``split`` all exist, in preference order: ``{layout: [paths]}``."""
    found = {name: paths for name, paths in _candidates(folder, split).items() if all(p.exists() for p in paths)}
    return {name: found[name] for name in LAYOUTS if name in found}


def expected_files(folder: Path, split: str) -> str:
    """A readable list of what each layout needs for ``split`` (for 'not found' messages)."""
    return "; ".join(
        f"{name}: {' + '.join(p.name for p in paths)}" for name, paths in _candidates(folder, split).items()
    )


def read_layout(layout: str, paths: list[Path]) -> RawSplit:
    """Read one split in ``layout`` from ``paths`` (as given by :func:`find_layouts`)."""
    return {"csv": _read_csv, "pickle": _read_pickle, "hdf5": _read_hdf5}[layout](*paths)


def count_layout(layout: str, paths: list[Path]) -> tuple[int, int]:
    """``(classes, images)`` of one split without decoding images (a pickle is still loaded whole)."""
    if layout == "csv":
        by_class = _csv_rows(paths[0])
        return len(by_class), sum(len(rows) for rows in by_class.values())
    if layout == "hdf5":
        h5py = _h5py(paths[0])
        try:
            with h5py.File(paths[0], "r") as f:
                sizes = [len(f["datasets"][w]) for w in f["datasets"]] if "datasets" in f else []
        except OSError as exc:
            raise DataError(f"cannot read {paths[0]} ({exc}); replace it with a good copy") from exc
        return len(sizes), sum(sizes)
    raw = read_layout(layout, paths)
    return len(raw.wnids), len(raw.images)


def _check_images(images: object, where: str) -> np.ndarray:
    if not isinstance(images, np.ndarray) or images.ndim != 4 or images.shape[1:] != (NATIVE_SIZE, NATIVE_SIZE, 3):
        got = f"{images.dtype}{list(images.shape)}" if isinstance(images, np.ndarray) else type(images).__name__
        raise DataError(
            f"{where}: expected images of shape (n, 84, 84, 3), got {got}; this is not a miniImageNet file in "
            "the expected layout: replace it with an original copy"
        )
    if images.dtype != np.uint8:
        if not (np.issubdtype(images.dtype, np.number) and images.min() >= 0 and images.max() <= 255):
            raise DataError(f"{where}: expected uint8 pixels in 0..255, got {images.dtype}; replace the file")
        images = images.astype(np.uint8)
    return images


# --------------------------------------------------------------------------------------------------- csv
def _decode(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            if im.size != (NATIVE_SIZE, NATIVE_SIZE):
                im = im.resize((NATIVE_SIZE, NATIVE_SIZE), Image.Resampling.LANCZOS)
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(f"{path} is not a readable image ({exc}); replace it with an original copy") from exc


def _csv_rows(csv_path: Path) -> dict[str, list[tuple[int, str]]]:
    """``{wnid: [(line number, file name), ...]}`` in file order, from a Ravi & Larochelle split file."""
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"cannot read the split file {csv_path}: {exc}") from exc
    if not rows or [h.strip() for h in rows[0]] != ["filename", "label"]:
        got = rows[0] if rows else "an empty file"
        raise DataError(f"{csv_path}: expected the header 'filename,label' (Ravi & Larochelle's CSV), got {got!r}")
    by_class: dict[str, list[tuple[int, str]]] = {}
    for lineno, row in enumerate(rows[1:], 2):
        if not row:
            continue
        if len(row) != 2 or not row[0].strip() or not row[1].strip():
            raise DataError(f"{csv_path}:{lineno}: expected 'filename,label', got {','.join(row)!r}")
        by_class.setdefault(row[1].strip(), []).append((lineno, row[0].strip()))
    if not by_class:
        raise DataError(f"{csv_path} lists no images; replace it with Ravi & Larochelle's split file")
    return by_class


def _read_csv(csv_path: Path, image_dir: Path) -> RawSplit:
    by_class: dict[str, list[tuple[str, Path]]] = {}
    for wnid, rows in _csv_rows(csv_path).items():
        for lineno, filename in rows:
            path = image_dir / filename
            if not path.is_file() and (image_dir / wnid / filename).is_file():
                path = image_dir / wnid / filename
            if not path.is_file():
                raise DataError(
                    f"{csv_path}:{lineno} names the image {filename!r}, but {path} does not exist; put the images "
                    f"in {image_dir}/ (flat, or one sub-folder per wnid)"
                )
            by_class.setdefault(wnid, []).append((Path(filename).stem, path))
    wnids = sorted(by_class)
    n = sum(len(v) for v in by_class.values())
    images = np.empty((n, NATIVE_SIZE, NATIVE_SIZE, 3), dtype=np.uint8)
    ids: list[str] = []
    class_images = []
    for wnid in wnids:
        start = len(ids)
        for stem, path in by_class[wnid]:
            images[len(ids)] = _decode(path)
            ids.append(stem)
        class_images.append(np.arange(start, len(ids), dtype=np.int64))
    if len(set(ids)) != len(ids):
        raise DataError(f"{csv_path} lists an image file twice; replace it with Ravi & Larochelle's split file")
    return RawSplit("csv", images, ids, wnids, class_images, [csv_path, image_dir])


# ------------------------------------------------------------------------------------------------ pickle
def _text(key: object) -> object:
    return key.decode("latin1") if isinstance(key, bytes) else key


def _read_pickle(path: Path) -> RawSplit:
    try:
        with open(path, "rb") as f:
            try:
                data = pickle.load(f)
            except UnicodeDecodeError:  # a Python-2 pickle: its str objects hold raw array bytes
                f.seek(0)
                data = pickle.load(f, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, AttributeError, ImportError) as exc:
        raise DataError(
            f"cannot read the pickle {path} ({type(exc).__name__}: {exc}); replace it with a good copy"
        ) from exc
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected a dict with 'image_data' and 'class_dict', got {type(data).__name__}")
    data = {_text(k): v for k, v in data.items()}
    if "image_data" not in data or "class_dict" not in data or not isinstance(data["class_dict"], dict):
        raise DataError(
            f"{path}: expected the keys 'image_data' and 'class_dict' (Ren et al.'s cache), "
            f"got {sorted(map(str, data))}"
        )
    images = _check_images(data["image_data"], str(path))
    class_dict = {str(_text(k)): np.asarray(v, dtype=np.int64).reshape(-1) for k, v in data["class_dict"].items()}
    wnids = sorted(class_dict)
    ids = [""] * len(images)
    for wnid in wnids:
        rows = class_dict[wnid]
        if len(rows) and (rows.min() < 0 or rows.max() >= len(images)):
            raise DataError(f"{path}: class {wnid!r} lists rows outside 0..{len(images) - 1}; the file is corrupt")
        for p, r in enumerate(rows.tolist()):
            if ids[r]:
                raise DataError(f"{path}: row {r} belongs to two classes ({ids[r]} and {wnid}); the file is corrupt")
            ids[r] = f"{wnid}/{p:04d}"
    if not all(ids):
        raise DataError(
            f"{path}: {ids.count('')} rows of image_data belong to no class of class_dict; the file is corrupt"
        )
    return RawSplit("pickle", images, ids, wnids, [class_dict[w] for w in wnids], [path])


# -------------------------------------------------------------------------------------------------- hdf5
def _h5py(path: Path) -> ModuleType:
    try:
        return importlib.import_module("h5py")
    except ImportError:
        raise DataError(
            f"reading {path} needs h5py, which is not installed; `pip install h5py` (or pip install "
            "'fewshot[hdf5]'), or use the pickle or csv layout of miniImageNet"
        ) from None


def _read_hdf5(data_path: Path, labels_path: Path) -> RawSplit:
    h5py = _h5py(data_path)
    try:
        labels = json.loads(labels_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read the label list {labels_path}: {exc}") from exc
    if not isinstance(labels, list) or not all(isinstance(w, str) for w in labels):
        raise DataError(f"{labels_path}: expected a JSON list of wnids, got {type(labels).__name__}")
    wnids = sorted(labels)
    arrays, ids, class_images, start = [], [], [], 0
    try:
        with h5py.File(data_path, "r") as f:
            if "datasets" not in f:
                raise DataError(f"{data_path}: expected a group 'datasets' (torchmeta's layout), got {sorted(f)}")
            group = f["datasets"]
            missing = [w for w in wnids if w not in group]
            if missing:
                raise DataError(f"{data_path}: the classes {missing[:3]} of {labels_path.name} have no dataset")
            for wnid in wnids:
                block = _check_images(group[wnid][()], f"{data_path}:datasets/{wnid}")
                arrays.append(block)
                ids.extend(f"{wnid}/{p:04d}" for p in range(len(block)))
                class_images.append(np.arange(start, start + len(block), dtype=np.int64))
                start += len(block)
    except OSError as exc:
        raise DataError(f"cannot read {data_path} ({exc}); replace it with a good copy") from exc
    images = np.concatenate(arrays) if arrays else np.zeros((0, NATIVE_SIZE, NATIVE_SIZE, 3), np.uint8)
    return RawSplit("hdf5", images, ids, wnids, class_images, [data_path, labels_path])
