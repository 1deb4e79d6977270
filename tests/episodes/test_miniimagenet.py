"""miniImageNet loader: the csv, pickle and hdf5 layouts give the same images; errors name the file."""

from __future__ import annotations

import csv
import io
import json
import pickle
import struct
import sys

import numpy as np
import pytest
from PIL import Image

from episodes.datasets import load_split
from episodes.datasets import miniimagenet_formats as formats
from episodes.datasets.miniimagenet import MiniImageNet
from episodes.sampler import EpisodeSampler
from fewshot.errors import ConfigError, DataError

h5py = pytest.importorskip("h5py")

WNIDS = ("n03000000", "n01000000", "n02000000")  # CSV order is not sorted order
PER_CLASS = 4


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))


def class_pixels(seed: int = 0) -> dict[str, np.ndarray]:
    """Per wnid, ``(4, 84, 84, 3)`` random uint8 images, in CSV order."""
    rng = np.random.default_rng(seed)
    return {w: rng.integers(0, 256, (PER_CLASS, 84, 84, 3), dtype=np.uint8) for w in WNIDS}


def csv_rows() -> list[tuple[str, str, int]]:
    """(file name, wnid, position in class): classes interleaved; file numbers not in position order."""
    rows = []
    for p in range(PER_CLASS):
        for w in WNIDS:
            rows.append((f"{w}{(PER_CLASS - p) * 7:08d}.png", w, p))
    return rows


def write_csv_layout(folder, pixels, split="test"):
    (folder / "images").mkdir(parents=True, exist_ok=True)
    with open(folder / f"{split}.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["filename", "label"])
        for name, wnid, p in csv_rows():
            writer.writerow([name, wnid])
            Image.fromarray(pixels[wnid][p]).save(folder / "images" / name)


def ren_cache(pixels) -> dict:
    """Ren et al.'s cache: image_data in CSV row order, class_dict in insertion (CSV) order."""
    image_data, class_dict = [], {}
    for _, wnid, p in csv_rows():
        class_dict.setdefault(wnid, []).append(len(image_data))
        image_data.append(pixels[wnid][p])
    return {"image_data": np.stack(image_data), "class_dict": class_dict}


def write_pickle_layout(folder, pixels, split="test", name=None):
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / (name or f"mini-imagenet-cache-{split}.pkl"), "wb") as f:
        pickle.dump(ren_cache(pixels), f, protocol=pickle.HIGHEST_PROTOCOL)


def write_hdf5_layout(folder, pixels, split="test"):
    folder.mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / f"{split}_data.hdf5", "w") as f:
        group = f.create_group("datasets")
        for wnid in WNIDS:
            group.create_dataset(wnid, data=pixels[wnid])
    (folder / f"{split}_labels.json").write_text(json.dumps(sorted(WNIDS)))


class Py2Pickler(pickle._Pickler):
    """Writes bytes as Python-2 ``str`` opcodes, as a Python-2 writer of the cache did."""

    dispatch = pickle._Pickler.dispatch.copy()

    def save_py2_str(self, obj):
        n = len(obj)
        self.write(
            pickle.SHORT_BINSTRING + bytes([n]) + obj if n < 256 else pickle.BINSTRING + struct.pack("<i", n) + obj
        )
        self.memoize(obj)

    dispatch[bytes] = save_py2_str


def per_class(split) -> dict[str, np.ndarray]:
    return {name: split.images[ix] for name, ix in zip(split.class_names, split.class_images, strict=True)}


# -------------------------------------------------------------------------------------------------- layouts
def test_three_layouts_give_identical_images_per_class(tmp_path):
    pixels = class_pixels()
    folder = tmp_path / "miniimagenet"
    write_csv_layout(folder, pixels)
    write_pickle_layout(folder, pixels)
    write_hdf5_layout(folder, pixels)
    splits = {lay: MiniImageNet.load("ravi", "test", tmp_path, layout=lay) for lay in ("csv", "pickle", "hdf5")}
    for layout, split in splits.items():
        assert split.class_names == sorted(WNIDS), layout
        assert split.meta == {"image_size": 84, "layout": layout, "rotation": "none"}
        for wnid, images in per_class(split).items():
            np.testing.assert_array_equal(images, pixels[wnid], err_msg=f"{layout} {wnid}")
    pk, h5, cs = splits["pickle"], splits["hdf5"], splits["csv"]
    assert [pk.image_ids[j] for j in pk.class_images[0]] == [f"n01000000/{p:04d}" for p in range(PER_CLASS)]
    assert [h5.image_ids[j] for j in h5.class_images[0]] == [f"n01000000/{p:04d}" for p in range(PER_CLASS)]
    assert [cs.image_ids[j] for j in cs.class_images[0]] == [f"n01000000{(PER_CLASS - p) * 7:08d}" for p in range(4)]
    assert pk.fingerprint == h5.fingerprint != cs.fingerprint  # content-based: ids differ in the csv layout
    assert MiniImageNet.load("ravi", "test", tmp_path).meta["layout"] == "pickle"  # preference when several


def test_csv_images_are_converted_to_rgb_and_resized_to_84(tmp_path):
    folder = tmp_path / "miniimagenet"
    (folder / "images").mkdir(parents=True)
    grey = np.random.default_rng(1).integers(0, 256, (100, 120), dtype=np.uint8)
    Image.fromarray(grey).save(folder / "images" / "n0100000000000001.png")
    (folder / "test.csv").write_text("filename,label\nn0100000000000001.png,n01000000\n")
    split = MiniImageNet.load("ravi", "test", tmp_path)
    expected = np.asarray(Image.fromarray(grey).convert("RGB").resize((84, 84), Image.Resampling.LANCZOS))
    np.testing.assert_array_equal(split.images[0], expected)
    assert split.images.shape == (1, 84, 84, 3)


def test_csv_layout_is_cached(tmp_path, monkeypatch):
    write_csv_layout(tmp_path / "miniimagenet", class_pixels())
    first = MiniImageNet.load("ravi", "test", tmp_path)
    assert list((tmp_path / "cache" / "miniimagenet").glob("*.npy"))

    def no_decoding(path):
        raise AssertionError(f"decoded {path} despite the cache")

    monkeypatch.setattr(formats, "_decode", no_decoding)
    second = MiniImageNet.load("ravi", "test", tmp_path)
    np.testing.assert_array_equal(first.images, second.images)
    assert (first.image_ids, first.fingerprint) == (second.image_ids, second.fingerprint)


def test_image_size_option_resizes_every_layout_alike(tmp_path):
    pixels = class_pixels(2)
    write_csv_layout(tmp_path / "miniimagenet", pixels)
    write_pickle_layout(tmp_path / "miniimagenet", pixels)
    small = {lay: MiniImageNet.load("ravi", "test", tmp_path, image_size=32, layout=lay) for lay in ("csv", "pickle")}
    assert small["csv"].images.shape == (12, 32, 32, 3)
    for wnid in WNIDS:
        np.testing.assert_array_equal(per_class(small["csv"])[wnid], per_class(small["pickle"])[wnid])


def test_python2_pickles_and_validation_file_name_are_read(tmp_path):
    pixels = class_pixels(3)
    folder = tmp_path / "miniimagenet"
    folder.mkdir()
    cache = ren_cache(pixels)
    py2 = {b"image_data": cache["image_data"], b"class_dict": {w.encode(): v for w, v in cache["class_dict"].items()}}
    buf = io.BytesIO()
    Py2Pickler(buf, protocol=2).dump(py2)
    (folder / "mini-imagenet-cache-validation.pkl").write_bytes(buf.getvalue())
    split = load_split("mini_imagenet", "ravi", "validation", data_root=tmp_path)
    assert split.split == "val" and split.class_names == sorted(WNIDS)
    for wnid, images in per_class(split).items():
        np.testing.assert_array_equal(images, pixels[wnid])


def test_episodes_from_a_colour_split(tmp_path):
    write_hdf5_layout(tmp_path / "miniimagenet", class_pixels())
    ep = EpisodeSampler(load_split("miniimagenet", split="test", data_root=tmp_path), 3, 1, 2, seed=0)[0]
    assert ep.support_x.shape == (3, 3, 84, 84) and ep.query_x.shape == (6, 3, 84, 84)
    assert ep.class_ids == tuple(sorted(WNIDS))


# --------------------------------------------------------------------------------------------------- errors
def test_missing_folder_and_missing_split_file(tmp_path):
    with pytest.raises(DataError, match="no miniimagenet/ folder .* cannot be downloaded automatically"):
        MiniImageNet.load("ravi", "test", tmp_path)
    write_pickle_layout(tmp_path / "miniimagenet", class_pixels(), split="train")
    with pytest.raises(DataError, match=r"no file of the 'test' split .* mini-imagenet-cache-test.pkl"):
        MiniImageNet.load("ravi", "test", tmp_path)
    with pytest.raises(DataError, match="no csv layout of the 'train' split .*found: pickle"):
        MiniImageNet.load("ravi", "train", tmp_path, layout="csv")


def test_pickle_with_wrong_image_size_names_the_file(tmp_path):
    folder = tmp_path / "miniimagenet"
    folder.mkdir()
    bad = {"image_data": np.zeros((2, 32, 32, 3), np.uint8), "class_dict": {"n01": [0, 1]}}
    (folder / "mini-imagenet-cache-test.pkl").write_bytes(pickle.dumps(bad))
    with pytest.raises(DataError, match=r"mini-imagenet-cache-test.pkl: expected images of shape \(n, 84, 84, 3\)"):
        MiniImageNet.load("ravi", "test", tmp_path)
    (folder / "mini-imagenet-cache-test.pkl").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot read the pickle .*mini-imagenet-cache-test.pkl"):
        MiniImageNet.load("ravi", "test", tmp_path)


def test_csv_row_pointing_at_a_missing_image_names_the_file_and_line(tmp_path):
    folder = tmp_path / "miniimagenet"
    write_csv_layout(folder, class_pixels())
    (folder / "images" / csv_rows()[4][0]).unlink()
    with pytest.raises(DataError, match=rf"test.csv:6 names the image '{csv_rows()[4][0]}'"):
        MiniImageNet.load("ravi", "test", tmp_path)
    (folder / "test.csv").write_text("file,class\n")
    with pytest.raises(DataError, match="expected the header 'filename,label'"):
        MiniImageNet.load("ravi", "test", tmp_path)


def test_missing_h5py_says_how_to_install_it(tmp_path, monkeypatch):
    write_hdf5_layout(tmp_path / "miniimagenet", class_pixels())
    monkeypatch.setitem(sys.modules, "h5py", None)  # makes `import h5py` raise ImportError
    with pytest.raises(DataError, match="pip install h5py"):
        MiniImageNet.load("ravi", "test", tmp_path)


def test_bad_protocol_split_and_options():
    with pytest.raises(ConfigError, match="unknown miniImageNet protocol 'vinyals'"):
        MiniImageNet.load("vinyals", "test")
    with pytest.raises(ConfigError, match="unknown miniImageNet split 'trainval'"):
        MiniImageNet.load("ravi", "trainval")
    with pytest.raises(ConfigError, match="image_size must be an int"):
        MiniImageNet.load("ravi", "test", image_size=84.0)
    with pytest.raises(ConfigError, match="layout must be one of"):
        MiniImageNet.load("ravi", "test", layout="zip")


# ----------------------------------------------------------------------------------------------------- info
def test_info_reports_layouts_and_counts(tmp_path):
    assert MiniImageNet.info(tmp_path)["present"] is False
    pixels = class_pixels()
    write_csv_layout(tmp_path / "miniimagenet", pixels)
    write_hdf5_layout(tmp_path / "miniimagenet", pixels)
    info = MiniImageNet.info(tmp_path)
    test = info["protocols"]["ravi"]["splits"]["test"]
    assert info["present"] and test == {"layout": "hdf5", "layouts_found": ["hdf5", "csv"], "classes": 3, "images": 12}
    assert "no file of the 'train' split" in info["protocols"]["ravi"]["splits"]["train"]["error"]
    assert MiniImageNet.info(tmp_path, layout="csv")["protocols"]["ravi"]["splits"]["test"]["layout"] == "csv"
