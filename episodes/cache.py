"""A content-addressed cache of decoded, preprocessed image arrays.

Decoding 32 460 Omniglot PNGs (or the npz pair) and resizing them takes seconds; loading the result back
takes milliseconds. A cache entry is a pair of files in ``<cache dir>/<namespace>/``:

* ``<key>.npy``: the array (any shape, any non-object dtype);
* ``<key>.json``: its description: format version, shape, dtype, CRC-32 of the array bytes, and whatever
  metadata the loader stores beside it (character names, content digests, ...).

The key is computed by the caller from a fingerprint of the source files (:func:`fingerprint_sources`: names,
sizes and sha256 of their bytes), the preprocessing options and a format version (:func:`make_key`), so a
changed source file or option gives a new entry and a stale one is never read.

Every write is atomic (a temporary file in the same folder, then ``os.replace``): an interrupted run leaves
either the old entry or the new one, never half a file. The ``.json`` is written last and is the commit
marker. An entry whose array does not match its description (truncated, wrong shape, CRC mismatch) is
reported with a warning and rebuilt. A cache folder that cannot be written is reported with a warning and
the data is used uncached.

Hashing a source file is memoized by ``(path, size, mtime)`` in ``<cache dir>/source_hashes.json`` so that a
second load does not rehash the sources (measured CPU time: sha256 of the 5.8 MB Omniglot npz pair about 10 ms,
of the 32 460 extracted PNG files about 0.6 s; checking the memo of the extracted files, i.e. stat() of each,
about 0.3 s).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import warnings
import zlib
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from episodes.data_root import CACHE_ENV, resolve_cache_dir

__all__ = [
    "CACHE_FORMAT_VERSION",
    "atomic_write_bytes",
    "cached_array",
    "fingerprint_sources",
    "load_cached",
    "make_key",
    "save_cached",
    "sha256_path",
]

CACHE_FORMAT_VERSION = 1
_HASH_INDEX = "source_hashes.json"
_memo: dict[tuple[str, tuple], str] = {}  # in-process memo of sha256_path, keyed like the json index


def _default_file_mode() -> int:
    """The mode ``open(path, "w")`` would give a new file: 0o666 minus the process umask (read without changing it)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # no /proc: read the umask by setting it, then put it back at once
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes | Callable[[Any], None], *, fsync: bool = False) -> None:
    """Write ``path`` atomically: to a temporary file in the same folder, then ``os.replace``.

    A reader sees the old file or the complete new one, never a part; a failure leaves no temporary file behind.
    The file gets the permissions a plain ``open(path, "w")`` would give it (``tempfile.mkstemp`` makes 0o600).

    Args:
        path: final file name; its folder is created if missing.
        data: the bytes to write, or a callable that writes into the open binary file handle it is given.
        fsync: flush the data to disk before the rename (checkpoints: survive a power loss, not only a kill).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            if callable(data):
                data(fh)
            else:
                fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), _default_file_mode())
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def make_key(*parts: Any) -> str:
    """A 32-hex-digit key from JSON-serializable ``parts`` (dicts are serialized with sorted keys)."""
    text = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _walk_files(folder: str, prefix: str = "") -> Iterator[tuple[str, os.DirEntry]]:
    """Every file under ``folder`` as (relative posix path, entry), sorted by name, hidden entries skipped."""
    with os.scandir(folder) as it:
        entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    for e in entries:
        if e.is_dir():
            yield from _walk_files(e.path, f"{prefix}{e.name}/")
        elif e.is_file():
            yield f"{prefix}{e.name}", e


def _signature(path: Path) -> tuple[tuple, int]:
    """What must not change for a memoized hash to stay valid (size and mtime of a file or of every file
    under a folder), and the total size in bytes."""
    if path.is_file():
        st = path.stat()
        return ("file", st.st_size, st.st_mtime_ns), st.st_size
    h = hashlib.sha256()
    count = total = 0
    for rel, entry in _walk_files(str(path)):
        st = entry.stat()
        h.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        count, total = count + 1, total + st.st_size
    return ("tree", count, total, h.hexdigest()), total


def _hash_now(path: Path) -> str:
    h = hashlib.sha256()
    if path.is_file():
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        return h.hexdigest()
    for rel, entry in _walk_files(str(path)):
        with open(entry.path, "rb") as fh:
            h.update(rel.encode() + b"\0" + hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def _read_index(index: Path) -> dict:
    try:
        data = json.loads(index.read_text())
        return data if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _sha256_and_size(path: Path) -> tuple[str, int]:
    path = path.absolute()
    sig, size = _signature(path)
    key = (str(path), sig)
    if key in _memo:
        return _memo[key], size
    index_path = resolve_cache_dir() / _HASH_INDEX
    index = _read_index(index_path)
    entry = index.get(str(path))
    if isinstance(entry, dict) and entry.get("signature") == list(sig) and isinstance(entry.get("sha256"), str):
        digest = entry["sha256"]
    else:
        digest = _hash_now(path)
        index = _read_index(index_path)  # re-read: another process may have added entries meanwhile
        index = {p: e for p, e in index.items() if Path(p).exists()}  # forget deleted sources (e.g. test folders)
        index[str(path)] = {"signature": list(sig), "sha256": digest}
        try:
            atomic_write_bytes(index_path, json.dumps(index, indent=0, sort_keys=True).encode())
        except OSError:
            pass  # an unwritable cache only costs a rehash next time; save_cached warns about it
    _memo[key] = digest
    return digest, size


def sha256_path(path: str | Path) -> str:
    """sha256 of a file's bytes, or of a folder's files (relative names and contents, sorted), memoized.

    The memo (in-process and in ``<cache dir>/source_hashes.json``) is keyed by the absolute path and the
    size and modification time of every file, so an edited file is rehashed.
    """
    return _sha256_and_size(Path(path))[0]


def fingerprint_sources(paths: Iterable[str | Path]) -> str:
    """Hex digest of the source files a decoded array was made from: their names, sizes and sha256.

    Args:
        paths: files or folders (a folder counts as all the files under it).
    """
    items = []
    for p in paths:
        digest, size = _sha256_and_size(Path(p))
        items.append([Path(p).name, size, digest])
    return make_key("sources", items)


def _entry_paths(namespace: str, key: str) -> tuple[Path, Path]:
    folder = resolve_cache_dir() / namespace
    return folder / f"{key}.npy", folder / f"{key}.json"


def _crc(array: np.ndarray) -> int:
    return zlib.crc32(memoryview(np.ascontiguousarray(array)).cast("B"))


def load_cached(namespace: str, key: str) -> tuple[np.ndarray, dict] | None:
    """The cached array and metadata for ``key``, or None if absent or corrupt (corrupt: with a warning).

    Returns:
        ``(array, meta)`` where ``meta`` is the dict given to :func:`save_cached`.
    """
    npy, desc = _entry_paths(namespace, key)
    if not desc.exists():
        return None
    problem = None
    try:
        record = json.loads(desc.read_text())
        if record.get("version") != CACHE_FORMAT_VERSION or record.get("key") != key:
            problem = f"its description {desc.name} is for another key or format version"
        else:
            array = np.load(npy, allow_pickle=False)
            shape, dtype = tuple(record["shape"]), np.dtype(record["dtype"])
            if array.shape != shape or array.dtype != dtype:
                problem = f"array is {array.dtype}{list(array.shape)}, expected {dtype}{list(shape)}"
            elif _crc(array) != record["crc32"]:
                problem = "CRC-32 of the array does not match its description"
    except (OSError, ValueError, KeyError, TypeError, EOFError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    if problem is not None:
        warnings.warn(
            f"decoded cache entry {npy} is unreadable or corrupt ({problem}); rebuilding it from the source files",
            stacklevel=2,
        )
        return None
    return array, record["meta"]


def save_cached(namespace: str, key: str, array: np.ndarray, meta: dict) -> Path | None:
    """Store ``array`` and JSON-serializable ``meta`` under ``key`` atomically; return the .npy path.

    Returns None, with a warning, if the cache folder cannot be written (the caller goes on uncached).
    """
    npy, desc = _entry_paths(namespace, key)
    array = np.ascontiguousarray(array)
    record = {
        "version": CACHE_FORMAT_VERSION,
        "key": key,
        "shape": list(array.shape),
        "dtype": array.dtype.str,
        "crc32": _crc(array),
        "meta": meta,
    }
    try:
        atomic_write_bytes(npy, lambda fh: np.save(fh, array, allow_pickle=False))
        atomic_write_bytes(desc, json.dumps(record).encode())
    except OSError as exc:
        warnings.warn(
            f"could not write the decoded cache {npy} ({exc}); the data is used uncached and will be decoded "
            f"again next time; set ${CACHE_ENV} to a writable folder to cache it",
            stacklevel=2,
        )
        return None
    return npy


def cached_array(
    namespace: str, key: str, build: Callable[[], tuple[np.ndarray, dict]]
) -> tuple[np.ndarray, dict, bool]:
    """Load ``key`` from the cache, or ``build()`` it and store it.

    Args:
        namespace: sub-folder of the cache dir (the dataset name).
        key: from :func:`make_key`.
        build: returns ``(array, meta)``; called only on a miss or a corrupt entry.

    Returns:
        ``(array, meta, hit)``; ``hit`` says whether the entry came from the cache.
    """
    found = load_cached(namespace, key)
    if found is not None:
        return found[0], found[1], True
    array, meta = build()
    save_cached(namespace, key, array, meta)
    return array, meta, False
