"""miniImageNet checksums: the CSVs' SHA-256, the images' tree digest, and naming missing/extra/changed files."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from episodes.data_root import shared_data_root
from episodes.datasets import load_split
from episodes.datasets import miniimagenet_checksums as checks
from fewshot.cli.main import main

SPLITS = {"train": ["n01000001.jpg", "n01000002.jpg"], "val": ["n02000001.jpg"], "test": ["n03000001.jpg"]}


@pytest.fixture
def fake_release(tmp_path, monkeypatch) -> Path:
    """A tiny miniImageNet folder plus reference checksums made from it (as the shipped ones are made)."""
    folder = tmp_path / "miniimagenet"
    (folder / "images").mkdir(parents=True)
    csv_sha = {}
    for split, names in SPLITS.items():
        text = "filename,label\n" + "".join(f"{n},{n[:9]}\n" for n in names)
        (folder / f"{split}.csv").write_text(text)
        csv_sha[split] = hashlib.sha256(text.encode()).hexdigest()
        for n in names:
            (folder / "images" / n).write_bytes(f"pixels of {n}".encode())
    listed = sorted(n for names in SPLITS.values() for n in names)
    digests = [hashlib.sha256((folder / "images" / n).read_bytes()).hexdigest() for n in listed]
    manifest = tmp_path / "manifest"
    manifest.write_bytes(b"".join(bytes.fromhex(d[:16]) for d in digests))
    listing = "".join(f"{d}  images/{n}\n" for d, n in zip(digests, listed, strict=True))
    tree = hashlib.sha256(listing.encode()).hexdigest()
    monkeypatch.setattr(checks, "CSV_SHA256", csv_sha)
    monkeypatch.setattr(checks, "TREE_DIGEST", tree)
    monkeypatch.setattr(checks, "_MANIFEST", manifest)
    return folder


def test_an_intact_release_verifies(fake_release):
    assert all(v["ok"] for v in checks.check_csvs(fake_release).values())
    found = checks.verify_images(fake_release)
    assert found["ok"] and found["images"] == 4
    assert found["missing"] == found["extra"] == found["changed"] == []


def test_missing_extra_and_changed_images_are_named(fake_release):
    images = fake_release / "images"
    (images / "n02000001.jpg").unlink()
    (images / "stray.jpg").write_bytes(b"not listed")
    (images / "n03000001.jpg").write_bytes(b"edited pixels")
    found = checks.verify_images(fake_release)
    assert not found["ok"]
    assert (found["missing"], found["extra"], found["changed"]) == (["n02000001.jpg"], ["stray.jpg"], ["n03000001.jpg"])


def test_an_edited_csv_fails_its_checksum_and_data_info_verify_exits_1(fake_release, monkeypatch, capsys):
    (fake_release / "val.csv").write_text("filename,label\nn02000001.jpg,n0200000x\n")
    assert checks.check_csvs(fake_release)["val"]["ok"] is False
    monkeypatch.setenv("FEWSHOT_DATA", str(fake_release.parent))
    assert main(["data", "info", "--verify"]) == 1
    out = capsys.readouterr().out
    assert "csv_sha256: train ok; val differs (" in out and "test ok" in out and "  layout: csv\n" in out


SHARED = shared_data_root()
REAL = None if SHARED is None else Path(SHARED) / "miniimagenet"


@pytest.mark.skipif(REAL is None or not REAL.is_dir(), reason="the real miniImageNet is not in ../shared/data")
def test_the_real_test_split_loads_with_its_counts_and_image_digests():
    assert {k: v["ok"] for k, v in checks.check_csvs(REAL).items()} == {"train": True, "val": True, "test": True}
    split = load_split("miniimagenet", "ravi", "test", data_root=SHARED)
    assert split.n_classes == 20 and split.images.shape == (12000, 84, 84, 3)
    assert all(len(ix) == 600 for ix in split.class_images)
    listed = checks._listed_images(REAL)
    prefixes = checks._MANIFEST.read_bytes()
    test_images = [line.split(",", 1)[0] for line in (REAL / "test.csv").read_text().splitlines()[1:] if line]
    assert len(test_images) == 12_000 and set(test_images) <= set(listed)
    for name in (test_images[0], test_images[5_999], test_images[-1]):  # three images of the test split itself
        i = listed.index(name)
        digest = hashlib.sha256((REAL / "images" / name).read_bytes()).hexdigest()
        assert digest.startswith(prefixes[8 * i : 8 * i + 8].hex()), name
