"""Checksums of the Ravi & Larochelle miniImageNet files, and the checks ``data info [--verify]`` runs.

The split CSVs are byte-identical to ``data/miniImagenet/{train,val,test}.csv`` of Ravi & Larochelle's
reference code (twitter-research/meta-learning-lstm); their SHA-256 are fixed below. The images are checked
against the tree digest of the data's README (SHA-256 of the ``sha256sum``-format listing ``<sha256>  images/
<file>`` of every image, sorted by file name). So that a check can *name* a changed image, the package ships
``miniimagenet_images.sha256-64``: the first 8 bytes of each image's SHA-256, in sorted file-name order of the
60,000 files the CSVs list (480,000 bytes; made from a copy whose tree digest equals the README's).
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from fewshot.errors import DataError

__all__ = ["CSV_SHA256", "TREE_DIGEST", "check_csvs", "verify_images"]


def _sha256(path: Path) -> str:
    """SHA-256 of the file's bytes, read now (never a memoized value: this is the integrity check)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


CSV_SHA256 = {
    "train": "498519cd8e49ce97ed26a4a3638966698ae41ab35e9c68538319fc9b46ba7d2f",
    "val": "5658a59921ca027ee76af92949869c5d6f41d77592ff3b18db325a9d10c893b9",
    "test": "2b7cfa78342995761a572a8158e539bc4e0a80f9bbd7d00c1e17a460fbbb93fa",
}
TREE_DIGEST = "1bba2cf8f82e37002de0d7e32bd87a9ae9978b657486eecc54b1dc4693e29377"
_MANIFEST = Path(__file__).with_name("miniimagenet_images.sha256-64")
_PREFIX_BYTES = 8


def check_csvs(folder: Path) -> dict[str, dict[str, Any]]:
    """SHA-256 of each split CSV in ``folder`` against Ravi & Larochelle's files.

    Returns:
        ``{split: {"sha256", "ok"}}`` for each CSV present (``ok`` False when it differs from the reference).
    """
    out = {}
    for split, expected in CSV_SHA256.items():
        path = folder / f"{split}.csv"
        if path.is_file():
            digest = _sha256(path)
            out[split] = {"sha256": digest, "ok": digest == expected}
    return out


def _listed_images(folder: Path) -> list[str]:
    names: set[str] = set()
    for split in CSV_SHA256:
        path = folder / f"{split}.csv"
        if not path.is_file():
            raise DataError(f"cannot verify the images: {path} is missing (the CSVs list the images to expect)")
        lines = path.read_text(encoding="utf-8").splitlines()[1:]
        names.update(line.split(",", 1)[0] for line in lines if line)
    return sorted(names)


def verify_images(folder: Path) -> dict[str, Any]:
    """Hash every image under ``folder/images`` and name each one that is missing, extra or changed.

    Args:
        folder: the ``miniimagenet/`` folder (CSV layout).

    Returns:
        ``{"images", "tree_digest", "ok", "missing", "extra", "changed"}``: ``ok`` is True when the tree digest
        equals the README's; the three lists name the files (``changed`` by the shipped 64-bit prefixes; it is
        only filled when the CSVs are the reference ones, since the prefixes follow their file list).

    Raises:
        DataError: no ``images/`` folder, or a CSV missing.
    """
    image_dir = folder / "images"
    if not image_dir.is_dir():
        raise DataError(f"cannot verify the images: {image_dir} is not a folder (the CSV layout keeps them there)")
    listed = _listed_images(folder)
    present = sorted(p.name for p in image_dir.iterdir() if p.is_file())
    listing, digests = [], {}
    for name in present:
        digest = _sha256(image_dir / name)
        digests[name] = digest
        listing.append(f"{digest}  images/{name}\n")
    tree = hashlib.sha256("".join(listing).encode()).hexdigest()
    listed_set, present_set = set(listed), set(present)
    changed: list[str] = []
    if all(c["ok"] for c in check_csvs(folder).values()):
        prefixes = _MANIFEST.read_bytes()
        if len(prefixes) != _PREFIX_BYTES * len(listed):
            raise DataError(f"{_MANIFEST} holds {len(prefixes)} bytes, expected {_PREFIX_BYTES * len(listed)}")
        for i, name in enumerate(listed):
            want = prefixes[i * _PREFIX_BYTES : (i + 1) * _PREFIX_BYTES].hex()
            if name in digests and not digests[name].startswith(want):
                changed.append(name)
    return {
        "images": len(present),
        "tree_digest": tree,
        "ok": tree == TREE_DIGEST,
        "missing": sorted(listed_set - present_set),
        "extra": sorted(present_set - listed_set),
        "changed": changed,
    }
