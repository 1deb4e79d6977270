"""Shared fixtures for the episodes tests: isolated data/cache locations and a tiny synthetic Omniglot.

``write_omniglot`` builds a miniature Omniglot (a few characters, 20 drawers each, real 105×105 PNG mode '1'
files) in any of the on-disk formats the loader reads, so format handling is tested without the real data.
Tests on the real data use ``real_omniglot_root`` (``<repo>/../shared/data``), skipped when it is absent.
"""

from __future__ import annotations

import io
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from episodes.data_root import CACHE_ENV, DATA_ENV, shared_data_root

# Synthetic alphabets: (set, alphabet, number of characters). Two of the Lake validation alphabets are included
# so that the lake protocol has a non-empty val split.
SYNTHETIC_ALPHABETS = (
    ("background", "Latin", 3),
    ("background", "Tagalog", 2),
    ("background", "Alphabet_of_the_Magi", 1),
    ("evaluation", "Angelic", 2),
)


def synthetic_pixels(char_id: int) -> np.ndarray:
    """Bool ``(20, 105, 105)`` pixels (True = paper) of synthetic character ``char_id``: a random stroke mask."""
    rng = np.random.default_rng(char_id)
    ink = np.zeros((20, 105, 105), dtype=bool)
    for d in range(20):
        r, c = rng.integers(10, 80, size=2)
        ink[d, r : r + 20, c : c + 4] = True
        ink[d, r + 8 : r + 11, c : c + 18] = True
    return ~ink


def _png(pixels: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="PNG")  # bool array -> mode '1', as the official PNGs
    return buf.getvalue()


def _characters() -> dict[str, list[tuple[int, str]]]:
    """Per set, the synthetic ``(char_id, "Alphabet/characterNN")`` in id order (background ids first)."""
    out: dict[str, list[tuple[int, str]]] = {"background": [], "evaluation": []}
    cid = 1
    for set_name, alphabet, n in SYNTHETIC_ALPHABETS:
        for k in range(1, n + 1):
            out[set_name].append((cid, f"{alphabet}/character{k:02d}"))
            cid += 1
    return out


def write_split_files(folder: Path, splits: dict[str, list[str]]) -> None:
    """Write ``splits/vinyals/<split>.txt`` under ``folder`` (the ``omniglot`` folder)."""
    target = folder / "splits" / "vinyals"
    target.mkdir(parents=True, exist_ok=True)
    for split, lines in splits.items():
        (target / f"{split}.txt").write_text("".join(f"{line}\n" for line in lines))


def synthetic_vinyals_splits() -> dict[str, list[str]]:
    """A Vinyals-style split of the synthetic characters: Latin train, Tagalog + Magi val, Angelic test."""
    chars = _characters()
    rot = ("rot000", "rot090", "rot180", "rot270")
    by_alpha: dict[str, list[str]] = {}
    for _, name in chars["background"] + chars["evaluation"]:
        by_alpha.setdefault(name.split("/")[0], []).extend(f"{name}/{r}" for r in rot)
    train = by_alpha["Latin"]
    val = by_alpha["Tagalog"] + by_alpha["Alphabet_of_the_Magi"]
    return {"train": train, "val": val, "test": by_alpha["Angelic"], "trainval": train + val}


def write_omniglot(root: Path, formats: dict[str, str] | None = None, splits: bool = True) -> Path:
    """Write the synthetic Omniglot under ``root/omniglot`` and return that folder.

    Args:
        root: the data root.
        formats: per set (``background``, ``evaluation``) one of ``zip``, ``folder``, ``npz`` (default zip).
        splits: also write the synthetic Vinyals split files.
    """
    formats = {"background": "zip", "evaluation": "zip", **(formats or {})}
    folder = root / "omniglot"
    folder.mkdir(parents=True, exist_ok=True)
    chars = _characters()
    for set_name, fmt in formats.items():
        stem = f"images_{set_name}"
        if fmt == "npz":
            images = np.stack([synthetic_pixels(cid) for cid, _ in chars[set_name]])
            np.savez_compressed(folder / f"{stem}.npz", images=images, labels=np.zeros(images.shape[:2], np.int64))
            continue
        files = {
            f"{stem}/{name}/{cid:04d}_{d + 1:02d}.png": _png(px)
            for cid, name in chars[set_name]
            for d, px in enumerate(synthetic_pixels(cid))
        }
        if fmt == "zip":
            with zipfile.ZipFile(folder / f"{stem}.zip", "w") as zf:
                for member, data in files.items():
                    zf.writestr(member, data)
        else:
            for member, data in files.items():
                (folder / member).parent.mkdir(parents=True, exist_ok=True)
                (folder / member).write_bytes(data)
    if "npz" in formats.values():
        rows, cid = ["set,alphabet,first_id,num_characters"], 1
        for set_name, alphabet, n in SYNTHETIC_ALPHABETS:
            rows.append(f"{set_name},{alphabet},{cid},{n}")
            cid += n
        (folder / "alphabets.csv").write_text("\n".join(rows) + "\n")
    if splits:
        write_split_files(folder, synthetic_vinyals_splits())
    return folder


@pytest.fixture
def isolated_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No ``$FEWSHOT_DATA``; ``$FEWSHOT_CACHE`` in a fresh temporary folder (returned); cwd = an empty folder."""
    monkeypatch.delenv(DATA_ENV, raising=False)
    cache = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(cache))
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    return cache


@pytest.fixture
def synthetic_root(tmp_path: Path, isolated_env: Path) -> Callable[..., Path]:
    """Factory: ``synthetic_root(name="data", formats=None, splits=True)`` writes a synthetic Omniglot under
    ``tmp_path/name`` and returns that data root (the cache is isolated)."""

    def make(name: str = "data", formats: dict[str, str] | None = None, splits: bool = True) -> Path:
        root = tmp_path / name
        write_omniglot(root, formats, splits)
        return root

    return make


@pytest.fixture
def omniglot_pixels() -> Callable[[int], np.ndarray]:
    """The synthetic pixel generator used by ``synthetic_root``: ``omniglot_pixels(char_id)`` gives the bool
    ``(20, 105, 105)`` images (True = paper) written for that character."""
    return synthetic_pixels


@pytest.fixture(scope="session")
def real_omniglot_root() -> Path:
    """The machine-provided data root holding the real Omniglot; skips the test if it is absent."""
    root = shared_data_root()
    if not (root / "omniglot" / "images_background.npz").is_file():
        pytest.skip(f"the real Omniglot is not at {root / 'omniglot'} (machine-provided copy absent)")
    return root
