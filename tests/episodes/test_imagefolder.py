"""Image-folder loader: split folders, seeded class-level split, sorted listing, resizing, modes, errors."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from episodes.datasets import load_split
from episodes.datasets.imagefolder import ImageFolder
from episodes.sampler import EpisodeSampler
from fewshot.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))


def write_class(folder, name, n, side=8, seed=0, ext="png"):
    """``n`` random RGB images named so that creation order differs from sorted order; returns them sorted."""
    rng = np.random.default_rng(seed)
    (folder / name).mkdir(parents=True, exist_ok=True)
    pixels = {}
    for i in reversed(range(n)):
        img = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
        Image.fromarray(img).save(folder / name / f"img{i:02d}.{ext}")
        pixels[f"img{i:02d}.{ext}"] = img
    return [pixels[k] for k in sorted(pixels)]


def test_split_folders_are_the_splits(tmp_path):
    root = tmp_path / "imagefolder"
    expected = {c: write_class(root / "test", c, 3, seed=k) for k, c in enumerate(["zebra", "ant", "moth"])}
    write_class(root / "train", "dog", 4)
    (root / "test" / "moth" / ".hidden.png").write_bytes(b"junk")
    (root / "test" / "moth" / "notes.txt").write_text("not an image")
    split = load_split("imagefolder", split="test", data_root=tmp_path)
    assert split.class_names == ["ant", "moth", "zebra"] and split.images.shape == (9, 8, 8, 3)
    assert split.image_ids[:3] == ["ant/img00.png", "ant/img01.png", "ant/img02.png"]
    for c, ix in zip(split.class_names, split.class_images, strict=True):
        np.testing.assert_array_equal(split.images[ix], np.stack(expected[c]))
    assert split.meta == {"image_size": None, "mode": "RGB", "split_source": "folders", "rotation": "none"}
    assert load_split("image_folder", split="train", data_root=tmp_path).class_names == ["dog"]
    with pytest.raises(DataError, match="has split folders .* but no val/"):
        ImageFolder.load("folder", "val", tmp_path)


def test_single_folder_is_split_by_class_deterministically(tmp_path):
    names = [f"c{k:02d}" for k in range(10)]
    for k, c in enumerate(names):
        write_class(tmp_path / "data", c, 2, seed=k)
    kw = {"path": tmp_path / "data", "split_fractions": (0.6, 0.2, 0.2), "seed": 3}
    parts = {s: ImageFolder.load("folder", s, **kw).class_names for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [6, 2, 2]
    assert sorted(parts["train"] + parts["val"] + parts["test"]) == names
    assert all(parts[s] == sorted(parts[s]) for s in parts)
    assert ImageFolder.load("folder", "val", **kw).class_names == parts["val"]  # same seed: same split
    other = {s: ImageFolder.load("folder", s, **{**kw, "seed": 4}).class_names for s in ("train", "val", "test")}
    assert other != parts
    # adding a class never reshuffles the others: each old class stays in its split or the new one is placed
    write_class(tmp_path / "data", "c99", 2)
    grown = {s: ImageFolder.load("folder", s, **kw).class_names for s in ("train", "val", "test")}
    moved = [c for s in parts for c in parts[s] if c not in grown[s]]
    assert len(moved) <= 1


def test_resize_mode_and_sizes(tmp_path):
    root = tmp_path / "imagefolder" / "test"
    write_class(root, "a", 2, side=10)
    write_class(root, "b", 2, side=12, ext="JPG")
    with pytest.raises(DataError, match=r"images differ in size: .*a/img00.png is 10x10 but .*img00.JPG is 12x12"):
        ImageFolder.load("folder", "test", tmp_path)
    grey = ImageFolder.load("folder", "test", tmp_path, image_size=6, mode="L")
    assert grey.images.shape == (4, 6, 6) and grey.image_shape == (1, 6, 6)
    src = Image.open(root / "a" / "img01.png").convert("L").resize((6, 6), Image.Resampling.LANCZOS)
    np.testing.assert_array_equal(grey.images[1], np.asarray(src))
    ep = EpisodeSampler(grey, 2, 1, 1, seed=0)[0]
    assert ep.support_x.shape == (2, 1, 6, 6)


def test_fingerprint_follows_content_and_options(tmp_path):
    write_class(tmp_path / "imagefolder" / "test", "a", 3)
    write_class(tmp_path / "imagefolder" / "test", "b", 3, seed=1)
    base = ImageFolder.load("folder", "test", tmp_path)
    assert ImageFolder.load("folder", "test", tmp_path).fingerprint == base.fingerprint  # cached: same
    assert ImageFolder.load("folder", "test", tmp_path, mode="L").fingerprint != base.fingerprint
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "imagefolder" / "test" / "a" / "img01.png")
    changed = ImageFolder.load("folder", "test", tmp_path)
    assert changed.fingerprint != base.fingerprint and not changed.images[1].any()


def test_errors_and_warnings(tmp_path):
    with pytest.raises(DataError, match="no imagefolder/ folder in the data root"):
        ImageFolder.load("folder", "test", tmp_path)
    with pytest.raises(DataError, match="given by path= does not exist"):
        ImageFolder.load("folder", "test", path=tmp_path / "nope")
    write_class(tmp_path / "imagefolder" / "test", "a", 2)
    (tmp_path / "imagefolder" / "test" / "empty").mkdir()
    with pytest.warns(UserWarning, match="empty holds no .png/.jpg/.jpeg image; skipping it"):
        assert ImageFolder.load("folder", "test", tmp_path).class_names == ["a"]
    (tmp_path / "imagefolder" / "test" / "empty").rmdir()
    (tmp_path / "imagefolder" / "test" / "a" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="broken.png is not a readable image"):
        ImageFolder.load("folder", "test", tmp_path)
    for bad in ({"mode": "CMYK"}, {"image_size": 0}, {"split_fractions": (0.5, 0.5, 0.5)}, {"seed": "x"}):
        with pytest.raises(ConfigError):
            ImageFolder.load("folder", "test", tmp_path, **bad)
    with pytest.raises(ConfigError, match="unknown imagefolder split"):
        ImageFolder.load("folder", "trainval", tmp_path)


def test_info_counts_without_decoding(tmp_path):
    assert ImageFolder.info(tmp_path)["present"] is False
    for k in range(5):
        write_class(tmp_path / "imagefolder", f"c{k}", k + 1)
    info = ImageFolder.info(tmp_path, split_fractions=(0.6, 0.2, 0.2))
    splits = info["protocols"]["folder"]["splits"]
    assert info["protocols"]["folder"]["split_source"] == "fractions"
    assert [splits[s]["classes"] for s in ("train", "val", "test")] == [3, 1, 1]
    assert sum(splits[s]["images"] for s in splits) == 15
