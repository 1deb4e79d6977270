"""Omniglot loader: formats, protocols, options, errors (synthetic data) and the real data's facts."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from episodes.datasets import load_split
from episodes.datasets.omniglot import LAKE_VAL_ALPHABETS, SPLITS, Omniglot
from episodes.datasets.omniglot_sources import SetSource, discover, iter_raw
from episodes.datasets.omniglot_store import character_digest, load_store, preprocess
from fewshot.cli.main import main
from fewshot.errors import ConfigError, DataError

# --------------------------------------------------------------------------------------- synthetic data


@pytest.mark.parametrize("fmt", ["folder", "npz"])
def test_every_format_gives_the_same_split(synthetic_root, fmt: str) -> None:
    ref = load_split("omniglot", "vinyals", "train", synthetic_root("zip"))
    other = load_split("omniglot", "vinyals", "train", synthetic_root(fmt, {"background": fmt, "evaluation": fmt}))
    np.testing.assert_array_equal(ref.images, other.images)
    assert ref.image_ids == other.image_ids and ref.class_names == other.class_names
    assert ref.fingerprint == other.fingerprint  # the fingerprint follows the pixels, not the file format


def test_stored_pixels_are_the_inverted_originals(synthetic_root, omniglot_pixels) -> None:
    split = load_split("omniglot", "vinyals", "train", synthetic_root(), image_size=105)
    c = split.class_names.index("Latin/character02/rot000")
    assert split.image_ids[split.class_images[c][3]] == "Latin/character02/0002_04"
    np.testing.assert_array_equal(split.images[split.class_images[c][3]], np.where(omniglot_pixels(2)[3], 0, 255))
    plain = load_split("omniglot", "vinyals", "train", synthetic_root("b"), image_size=105, invert=False)
    np.testing.assert_array_equal(plain.images, 255 - split.images)


def test_vinyals_rotations_share_images(synthetic_root) -> None:
    split = load_split("omniglot", "vinyals", "train", synthetic_root())
    assert split.n_classes == 12 and split.images.shape == (60, 28, 28) and split.images.dtype == np.uint8
    for c, name in enumerate(split.class_names):
        assert split.class_rotation[c] == int(name[-3:]) // 90
        base = split.class_names.index(name[:-3] + "000")
        np.testing.assert_array_equal(split.class_images[c], split.class_images[base])
    assert split.class_groups == ["Latin"] * 12
    assert split.meta == {"image_size": 28, "invert": True, "resample": "lanczos", "rotation": "classes"}


@pytest.mark.parametrize("rotation", ["augment", "none"])
def test_vinyals_without_rotation_classes_keeps_rot000(synthetic_root, rotation: str) -> None:
    split = load_split("omniglot", "vinyals", "val", synthetic_root(), rotation=rotation)
    assert split.class_names == ["Tagalog/character01", "Tagalog/character02", "Alphabet_of_the_Magi/character01"]
    assert split.class_rotation.tolist() == [0, 0, 0] and split.meta["rotation"] == rotation


def test_lake_splits_by_alphabet(synthetic_root) -> None:
    root = synthetic_root()
    got = {s: load_split("omniglot", "lake", s, root) for s in SPLITS}
    assert {s: got[s].n_classes for s in SPLITS} == {"train": 3, "val": 3, "test": 2, "trainval": 6}
    assert set(got["val"].class_groups) == {"Tagalog", "Alphabet_of_the_Magi"} <= set(LAKE_VAL_ALPHABETS)
    assert set(got["train"].class_groups) == {"Latin"} and set(got["test"].class_groups) == {"Angelic"}
    assert got["trainval"].class_names == [  # all background characters, in character-id order
        *(f"Latin/character0{k}" for k in (1, 2, 3)),
        *(f"Tagalog/character0{k}" for k in (1, 2)),
        "Alphabet_of_the_Magi/character01",
    ]
    assert got["train"].meta["rotation"] == "none"
    rotated = load_split("omniglot", "lake", "test", root, rotation="classes")
    assert rotated.n_classes == 8 and rotated.class_rotation.tolist() == [0, 1, 2, 3] * 2


def test_fingerprint_follows_options_and_split(synthetic_root) -> None:
    root = synthetic_root()
    base = load_split("omniglot", "vinyals", "test", root).fingerprint
    assert base == load_split("omniglot", "vinyals", "test", root).fingerprint
    others = [
        load_split("omniglot", "vinyals", "test", root, image_size=14),
        load_split("omniglot", "vinyals", "test", root, invert=False),
        load_split("omniglot", "vinyals", "test", root, rotation="augment"),
        load_split("omniglot", "vinyals", "test", root, resample="nearest"),
        load_split("omniglot", "lake", "test", root, rotation="classes"),
        load_split("omniglot", "vinyals", "val", root),
    ]
    assert len({base, *(o.fingerprint for o in others)}) == 7


def test_nearest_resample_keeps_images_binary(synthetic_root) -> None:
    split = load_split("omniglot", "vinyals", "test", synthetic_root(), resample="nearest")
    assert set(np.unique(split.images).tolist()) == {0, 255}


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"protocol": "ravi"}, "unknown Omniglot protocol 'ravi'"),
        ({"split": "dev"}, "unknown Omniglot split 'dev'"),
        ({"image_size": 0}, "image_size must be an int"),
        ({"image_size": 28.0}, "image_size must be an int"),
        ({"invert": "yes"}, "invert must be true or false"),
        ({"rotation": "random"}, "rotation must be one of classes, augment, none"),
        ({"resample": "bicubic"}, "resample must be one of lanczos, nearest"),
    ],
)
def test_bad_options_raise_config_error(synthetic_root, kwargs: dict, match: str) -> None:
    args = {"protocol": "vinyals", "split": "train", **kwargs}
    with pytest.raises(ConfigError, match=match):
        Omniglot.load(data_root=synthetic_root(), **args)


def test_truncated_zip_names_the_file_and_says_to_refetch(synthetic_root) -> None:
    root = synthetic_root()
    bad = root / "omniglot" / "images_evaluation.zip"
    bad.write_bytes(bad.read_bytes()[:5000])
    with pytest.raises(
        DataError, match=r"images_evaluation\.zip is corrupt or truncated.*delete it and fetch it again"
    ):
        load_split("omniglot", "vinyals", "test", root)


def test_corrupt_member_is_caught_when_decoding(synthetic_root) -> None:
    root = synthetic_root()
    path = root / "omniglot" / "images_evaluation.zip"
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[0]
    data[info.header_offset + 30 + len(info.filename) + 40] ^= 0xFF  # inside the first member's bytes: CRC fails
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"images_evaluation\.zip is corrupt.*delete it"):
        load_split("omniglot", "vinyals", "test", root)


def test_wrong_image_size_is_rejected(synthetic_root) -> None:
    root = synthetic_root("d", {"evaluation": "folder"})
    png = next((root / "omniglot" / "images_evaluation").glob("*/*/*.png"))
    Image.new("1", (28, 28), 1).save(png)
    with pytest.raises(DataError, match=r"is 28×28, expected 105×105"):
        load_split("omniglot", "vinyals", "test", root)


def test_npz_without_alphabets_csv_says_where_to_get_it(synthetic_root) -> None:
    root = synthetic_root("d", {"background": "npz", "evaluation": "npz"})
    (root / "omniglot" / "alphabets.csv").unlink()
    with pytest.raises(DataError, match=r"needs .*alphabets\.csv.*shared/data/omniglot/alphabets\.csv"):
        load_split("omniglot", "lake", "test", root)


def test_missing_split_file_says_which_and_how_to_get_it(synthetic_root) -> None:
    root = synthetic_root()
    (root / "omniglot" / "splits" / "vinyals" / "test.txt").unlink()
    with pytest.raises(DataError, match=r"vinyals/test\.txt is missing.*run_episode\.py data fetch omniglot"):
        load_split("omniglot", "vinyals", "test", root)


@pytest.mark.parametrize(
    "line, match",
    [
        ("Latin/character09/rot000", r"test\.txt:2 names 'Latin/character09', which is not in the Omniglot data"),
        ("Latin/character01/rot045", r"test\.txt:2: .* is not of the form"),
        ("Angelic/character01/rot000", r"test\.txt:2: .* repeats line 1"),
    ],
)
def test_bad_split_lines_are_rejected(synthetic_root, line: str, match: str) -> None:
    root = synthetic_root()
    (root / "omniglot" / "splits" / "vinyals" / "test.txt").write_text(f"Angelic/character01/rot000\n{line}\n")
    with pytest.raises(DataError, match=match):
        load_split("omniglot", "vinyals", "test", root)


def test_split_without_classes_under_the_rotation_mode(synthetic_root) -> None:
    root = synthetic_root()
    (root / "omniglot" / "splits" / "vinyals" / "test.txt").write_text("Angelic/character01/rot090\n")
    assert load_split("omniglot", "vinyals", "test", root).n_classes == 1
    with pytest.raises(DataError, match=r"test split has no classes with rotation='none'"):
        load_split("omniglot", "vinyals", "test", root, rotation="none")


def test_no_data_at_all(isolated_env: Path, tmp_path: Path) -> None:
    (tmp_path / "empty" / "omniglot").mkdir(parents=True)
    with pytest.raises(DataError, match=r"no Omniglot data in .*data fetch omniglot"):
        load_split("omniglot", "vinyals", "test", tmp_path / "empty")
    with pytest.raises(DataError, match=r"no omniglot/ folder in the data root"):
        load_split("omniglot", "vinyals", "test", tmp_path)


def test_data_info_json_and_absent_dataset(synthetic_root, tmp_path: Path, capsys) -> None:
    root = synthetic_root()
    assert main(["data", "info", "--data-root", str(root), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)["omniglot"]
    assert (report["present"], report["data_root"], report["data_root_rule"]) == (True, str(root), "flag")
    assert report["characters"] == {"background": 6, "evaluation": 2, "total": 8}
    vinyals = report["protocols"]["vinyals"]["splits"]
    assert vinyals["train"] == {"classes": 12, "images": 240, "unique_images": 60}
    assert report["protocols"]["lake"]["splits"]["val"]["classes"] == 3
    (tmp_path / "nothing").mkdir()
    assert main(["data", "info", "--data-root", str(tmp_path / "nothing"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["omniglot"]["present"] is False


def test_data_info_bad_root_exits_2_with_one_line(tmp_path: Path, capsys) -> None:
    assert main(["data", "info", "--data-root", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the data root") and err.count("\n") == 1


# ------------------------------------------------------------------------------------------- real data


@pytest.fixture(scope="module")
def real(real_omniglot_root: Path) -> dict:
    """Every split of both protocols, loaded once (the decoded store comes from the persistent cache)."""
    return {(p, s): load_split("omniglot", p, s, real_omniglot_root) for p in Omniglot.protocols for s in SPLITS}


def test_real_counts(real: dict, real_omniglot_root: Path) -> None:
    info = Omniglot.info(real_omniglot_root)
    assert info["characters"] == {"background": 964, "evaluation": 659, "total": 1623}
    counts = {k: v.n_classes for k, v in real.items()}
    assert [counts["vinyals", s] for s in SPLITS] == [4112, 688, 1692, 4800]
    assert [counts["lake", s] for s in SPLITS] == [883, 81, 659, 964]
    assert real["vinyals", "train"].images.shape == (20560, 28, 28)
    assert {len(ix) for v in real.values() for ix in v.class_images} == {20}


@pytest.mark.parametrize("protocol", ["vinyals", "lake"])
def test_real_splits_are_disjoint(real: dict, protocol: str) -> None:
    names = {s: set(real[protocol, s].class_names) for s in ("train", "val", "test")}
    chars = {s: {i.rsplit("/", 1)[0] for i in real[protocol, s].image_ids} for s in names}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not names[a] & names[b], f"classes shared by {a} and {b}"
        assert not chars[a] & chars[b], f"characters shared by {a} and {b}"
    assert set(real[protocol, "trainval"].class_names) == names["train"] | names["val"]
    if protocol == "lake":
        alphabets = {s: set(real[protocol, s].class_groups) for s in names}
        assert alphabets["val"] == set(LAKE_VAL_ALPHABETS)
        assert not alphabets["train"] & alphabets["val"] and not alphabets["train"] & alphabets["test"]


def test_real_rotated_class_is_rot90_of_the_original(real: dict, real_omniglot_root: Path) -> None:
    split = real["vinyals", "train"]
    c = next(i for i, n in enumerate(split.class_names) if n.endswith("/rot090"))
    name = split.class_names[c].rsplit("/", 1)[0]
    assert split.class_rotation[c] == 1
    np.testing.assert_array_equal(split.class_images[c], split.class_images[split.class_names.index(f"{name}/rot000")])
    catalog = discover(real_omniglot_root / "omniglot")
    source = next(s for s in catalog.sets if any(ch.name == name for ch in s.characters))
    j = next(i for i, ch in enumerate(source.characters) if ch.name == name)
    sub = SetSource(
        source.set, source.kind, source.paths, True, source.characters[j : j + 1], source.locations[j : j + 1]
    )
    ((_, raw),) = iter_raw(sub)
    stored = split.images[split.class_images[c][0]]
    np.testing.assert_array_equal(stored, preprocess(raw[:1], 28)[0])  # stored unrotated
    # ProtoNets rotates the PIL image by DDD degrees; PIL's rotate and numpy's rot90(k>0) both turn counter-clockwise
    pil_rotated = np.asarray(Image.fromarray(raw[0]).rotate(90))
    np.testing.assert_array_equal(pil_rotated, np.rot90(raw[0], 1))
    np.testing.assert_array_equal(np.rot90(preprocess(raw[:1], 105)[0], 1), preprocess(pil_rotated[None], 105)[0])
    drawn = np.rot90(stored, int(split.class_rotation[c])).astype(int)
    reference = preprocess(pil_rotated[None], 28)[0].astype(int)  # rotate first, then resize (ProtoNets' order)
    assert np.abs(drawn - reference).max() <= 1 and np.mean(drawn == reference) > 0.999


def test_real_small1_zip_matches_the_npz_bit_for_bit(real_omniglot_root: Path, tmp_path: Path) -> None:
    (tmp_path / "omniglot").mkdir()
    (tmp_path / "omniglot" / "images_background_small1.zip").symlink_to(
        real_omniglot_root / "omniglot" / "images_background_small1.zip"
    )
    small = discover(tmp_path / "omniglot")
    assert small.get_set("background").kind == "minimal:zip" and len(small.characters) == 136
    full = discover(real_omniglot_root / "omniglot").get_set("background")
    pos = {ch.name: i for i, ch in enumerate(full.characters)}
    idx = [pos[ch.name] for ch in small.characters]
    sub = SetSource(
        "background",
        "npz",
        full.paths,
        True,
        tuple(full.characters[i] for i in idx),
        tuple(full.locations[i] for i in idx),
    )
    from_npz = {ch.name: (ch, px) for ch, px in iter_raw(sub)}
    for ch, px in iter_raw(small.get_set("background")):  # 105×105 raw bits
        assert from_npz[ch.name][0] == ch  # same id, name and set
        np.testing.assert_array_equal(px, from_npz[ch.name][1], err_msg=ch.name)
    small_store = load_store(small, 28)
    full_store = load_store(discover(real_omniglot_root / "omniglot"), 28)
    rows = np.concatenate([np.arange(20) + 20 * full_store.positions()[ch.name] for ch in small.characters])
    np.testing.assert_array_equal(small_store.images, full_store.images[rows])  # after the resize pipeline
    assert small_store.digests == [full_store.digests[full_store.positions()[ch.name]] for ch in small.characters]


def test_real_small1_extracted_folder_matches_the_npz(real_omniglot_root: Path, tmp_path: Path) -> None:
    with zipfile.ZipFile(real_omniglot_root / "omniglot" / "images_background_small1.zip") as zf:
        for info in zf.infolist():  # what `unzip` does; 5x faster than ZipFile.extractall's per-file checks
            if info.filename.endswith(".png"):
                target = tmp_path / "omniglot" / info.filename
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(zf.read(info))
    folder = discover(tmp_path / "omniglot").get_set("background")
    assert folder.kind == "minimal:folder" and len(folder.characters) == 136
    full = load_store(discover(real_omniglot_root / "omniglot"), 28)  # cached: holds the npz's content digests
    where = full.positions()
    for ch, px in iter_raw(folder):  # equal sha256 of ids + 105×105 bits: bit-identical images
        assert character_digest(ch, px) == full.digests[where[ch.name]], ch.name


def test_real_data_info_text(real_omniglot_root: Path, capsys) -> None:
    assert main(["data", "info", "--data-root", str(real_omniglot_root)]) == 0
    out = capsys.readouterr().out
    assert "total 1623" in out
    assert any(
        line.split()[:6] == ["vinyals", "classes", "train", "4112", "82240", "20560"] for line in out.splitlines()
    )
