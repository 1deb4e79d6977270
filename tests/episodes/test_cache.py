"""The decoded-array cache: keys, memoized source hashes, atomic writes, corruption detection and rebuild."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

import episodes.cache as cache
from episodes.data_root import CACHE_ENV
from episodes.datasets.omniglot_sources import discover
from episodes.datasets.omniglot_store import load_store


def _entry(cache_dir: Path, namespace: str = "ns") -> tuple[Path, Path]:
    (npy,) = (cache_dir / namespace).glob("*.npy")
    return npy, npy.with_suffix(".json")


def test_roundtrip_and_build_called_once(isolated_env: Path) -> None:
    calls = []

    def build():
        calls.append(1)
        return np.arange(24, dtype=np.uint8).reshape(2, 3, 4), {"names": ["a", "b"]}

    a, meta, hit = cache.cached_array("ns", "k1", build)
    b, meta2, hit2 = cache.cached_array("ns", "k1", build)
    assert (hit, hit2, len(calls)) == (False, True, 1)
    np.testing.assert_array_equal(a, b)
    assert b.dtype == np.uint8 and meta2 == {"names": ["a", "b"]}
    assert [p.name for p in (isolated_env / "ns").iterdir() if p.name.startswith(".")] == []  # no temp files left


@pytest.mark.parametrize("damage", ["truncate", "flip", "json"])
def test_corrupt_entry_warns_and_is_rebuilt(isolated_env: Path, damage: str) -> None:
    original = np.arange(1000, dtype=np.uint8)
    cache.save_cached("ns", "k", original, {})
    npy, desc = _entry(isolated_env)
    if damage == "truncate":
        npy.write_bytes(npy.read_bytes()[:-100])
    elif damage == "flip":
        data = bytearray(npy.read_bytes())
        data[-1] ^= 0xFF  # same size and header, different content: only the CRC catches it
        npy.write_bytes(bytes(data))
    else:
        desc.write_text("{not json")
    with pytest.warns(UserWarning, match="corrupt.*rebuilding"):
        arr, _, hit = cache.cached_array("ns", "k", lambda: (original.copy(), {}))
    assert not hit
    np.testing.assert_array_equal(arr, original)
    assert cache.load_cached("ns", "k") is not None  # the rebuilt entry is good


def test_failed_write_leaves_no_file(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"

    def writer(fh):
        fh.write(b"half")
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        cache.atomic_write_bytes(target, writer)
    assert list(tmp_path.iterdir()) == []


def test_unwritable_cache_warns_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    with pytest.warns(UserWarning, match="could not write the decoded cache"):
        arr, _, hit = cache.cached_array("ns", "k", lambda: (np.ones(3, np.uint8), {}))
    assert not hit and arr.sum() == 3


def test_key_depends_on_every_part() -> None:
    base = cache.make_key("omniglot", 1, {"image_size": 28, "invert": True})
    assert base == cache.make_key("omniglot", 1, {"invert": True, "image_size": 28})  # dict order is irrelevant
    assert base != cache.make_key("omniglot", 1, {"image_size": 28, "invert": False})
    assert base != cache.make_key("omniglot", 2, {"image_size": 28, "invert": True})


def test_source_hash_is_memoized_and_invalidated_by_edits(
    isolated_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(b"abc" * 1000)
    assert cache.sha256_path(src) == hashlib.sha256(b"abc" * 1000).hexdigest()
    index = json.loads((isolated_env / "source_hashes.json").read_text())
    assert index[str(src)]["sha256"] == hashlib.sha256(b"abc" * 1000).hexdigest()
    cache._memo.clear()  # a new process: only the json index remains

    def no_rehash(path):
        raise AssertionError(f"{path} was rehashed")

    monkeypatch.setattr(cache, "_hash_now", no_rehash)
    assert cache.sha256_path(src) == hashlib.sha256(b"abc" * 1000).hexdigest()
    monkeypatch.undo()
    monkeypatch.setenv(CACHE_ENV, str(isolated_env))
    src.write_bytes(b"abcd" * 1000)  # new size: the memo no longer applies
    assert cache.sha256_path(src) == hashlib.sha256(b"abcd" * 1000).hexdigest()


def test_folder_hash_covers_names_and_contents(tmp_path: Path, isolated_env: Path) -> None:
    tree = tmp_path / "tree"
    (tree / "a").mkdir(parents=True)
    png = tree / "a" / "x.png"
    png.write_bytes(b"1")
    os.utime(png, ns=(1_000_000_000, 1_000_000_000))
    first = cache.sha256_path(tree)
    png.write_bytes(b"2")  # same size: the memo notices the new mtime
    os.utime(png, ns=(2_000_000_000, 2_000_000_000))
    second = cache.sha256_path(tree)
    png.rename(tree / "a" / "y.png")  # same bytes, other name
    assert len({first, second, cache.sha256_path(tree)}) == 3


def test_omniglot_store_is_cached_and_rebuilt_after_corruption(synthetic_root, isolated_env: Path) -> None:
    catalog = discover(synthetic_root() / "omniglot")
    cold = load_store(catalog, image_size=28)
    warm = load_store(catalog, image_size=28)
    assert (cold.from_cache, warm.from_cache) == (False, True)
    np.testing.assert_array_equal(cold.images, warm.images)
    assert warm.digests == cold.digests
    npy, _ = _entry(isolated_env, "omniglot")
    data = bytearray(npy.read_bytes())
    data[-5] ^= 0x01
    npy.write_bytes(bytes(data))
    with pytest.warns(UserWarning, match="corrupt"):
        again = load_store(catalog, image_size=28)
    assert not again.from_cache
    np.testing.assert_array_equal(again.images, cold.images)
    other = load_store(catalog, image_size=14)  # other options: another entry, not a stale hit
    assert not other.from_cache and other.images.shape[1:] == (14, 14)


def test_atomic_write_gives_the_mode_a_plain_open_would(tmp_path: Path) -> None:
    from episodes.cache import atomic_write_bytes

    old = os.umask(0o027)
    try:
        atomic_write_bytes(tmp_path / "a.csv", b"x,y\n")
        (tmp_path / "plain.csv").write_bytes(b"x,y\n")
    finally:
        os.umask(old)
    assert (tmp_path / "a.csv").stat().st_mode & 0o777 == (tmp_path / "plain.csv").stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_atomic_write_failure_keeps_the_old_file_and_leaves_no_temp(tmp_path: Path) -> None:
    from episodes.cache import atomic_write_bytes

    target = tmp_path / "ckpt.pt"
    target.write_bytes(b"saved")

    def explode(fh) -> None:  # noqa: ANN001 - a binary file handle
        fh.write(b"partial")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write_bytes(target, explode, fsync=True)
    assert target.read_bytes() == b"saved" and sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]
