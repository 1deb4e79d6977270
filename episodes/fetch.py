"""Download datasets with checksums: resumable, atomic, failing fast when offline.

``fetch_omniglot(data_root)`` puts into ``<data root>/omniglot/``:

* ``images_background.zip`` and ``images_evaluation.zip`` from brendenlake/omniglot ``python/`` (Lake et al.,
  Science 2015), checked against the md5 sums torchvision records;
* the Vinyals split files ``splits/vinyals/{train,val,test,trainval}.txt`` from jakesnell/prototypical-networks
  (no published checksum: their line counts 4112 / 688 / 1692 / 4800 are checked instead).

How a file is fetched (:func:`download`), standard library only (``urllib``):

* it is written to ``<name>.part``; if a ``.part`` is already there, the request asks for the rest of it with
  an HTTP ``Range`` header and appends when the server answers 206 with the matching range, or starts over
  when the server sends the whole file (200);
* the final name appears only after the checksum (or line count) matched, through ``os.replace``; a mismatch
  deletes the ``.part`` and raises :class:`~fewshot.errors.DataError`, so a bad file never sits under the
  final name; a file already under its final name is verified and kept, never overwritten;
* without a network (connection refused, DNS failure, timeout) it fails at once, after one attempt with a
  ``timeout`` of 10 s per connect/read, with a message saying how to point the data root at a local copy.

The table of files is data (:class:`RemoteFile`), so tests point it at a local server.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from episodes.data_root import DATA_ENV, resolve_fetch_root, shared_data_root
from fewshot.errors import DataError

__all__ = ["FETCHERS", "OMNIGLOT_FILES", "RemoteFile", "download", "fetch_files", "fetch_omniglot"]

_OMNIGLOT_URL = "https://raw.githubusercontent.com/brendenlake/omniglot/master/python/"
_VINYALS_URL = "https://raw.githubusercontent.com/jakesnell/prototypical-networks/master/data/omniglot/splits/vinyals/"
_CHUNK = 1 << 16


@dataclass(frozen=True)
class RemoteFile:
    """One file to download and how to check it.

    Attributes:
        name: path relative to the dataset folder, e.g. ``"splits/vinyals/train.txt"``.
        url: where to get it.
        md5: expected md5 hex digest, or None when none is published.
        lines: expected number of non-empty lines (for text files without a published checksum), or None.
    """

    name: str
    url: str
    md5: str | None = None
    lines: int | None = None


OMNIGLOT_FILES: tuple[RemoteFile, ...] = (
    RemoteFile(
        "images_background.zip", _OMNIGLOT_URL + "images_background.zip", md5="68d2efa1b9178cc56df9314c21c6e718"
    ),
    RemoteFile(
        "images_evaluation.zip", _OMNIGLOT_URL + "images_evaluation.zip", md5="6b91aef0f799c5bb55b94e3f2daec811"
    ),
    *(
        RemoteFile(f"splits/vinyals/{s}.txt", f"{_VINYALS_URL}{s}.txt", lines=n)
        for s, n in (("train", 4112), ("val", 688), ("test", 1692), ("trainval", 4800))
    ),
)


def _offline_hint() -> str:
    return (
        f"No internet? Use a local copy instead: pass --data-root DIR (or set {DATA_ENV}=DIR) where DIR/omniglot/ "
        f"holds the zips (or the npz pair with alphabets.csv) and splits/vinyals/; on these machines a copy is at "
        f"{shared_data_root()}, which is used automatically when neither is set"
    )


def _problem(path: Path, remote: RemoteFile) -> str | None:
    """Why ``path`` is not a good copy of ``remote`` (None if it is)."""
    if remote.md5 is not None:
        h = hashlib.md5()
        with open(path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
        if h.hexdigest() != remote.md5:
            return f"its md5 is {h.hexdigest()}, expected {remote.md5}"
    if remote.lines is not None:
        try:
            n = sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
        except UnicodeDecodeError:
            return "it is not a UTF-8 text file"
        if n != remote.lines:
            return f"it has {n} non-empty lines, expected {remote.lines}"
    return None


def _open(remote: RemoteFile, offset: int, timeout: float) -> http.client.HTTPResponse | None:
    """Open the URL from byte ``offset``; None when the server says the range is past the end (HTTP 416)."""
    headers = {"User-Agent": "fewshot-fetch"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        return urllib.request.urlopen(urllib.request.Request(remote.url, headers=headers), timeout=timeout)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and offset:
            return None
        raise DataError(f"downloading {remote.url} failed: HTTP {exc.code} {exc.reason}. {_offline_hint()}") from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise DataError(f"cannot reach {remote.url} ({reason}). {_offline_hint()}") from exc


def _resumed(resp: http.client.HTTPResponse, offset: int) -> bool:
    return resp.status == 206 and (resp.headers.get("Content-Range") or "").startswith(f"bytes {offset}-")


def download(
    remote: RemoteFile, folder: str | Path, *, timeout: float = 10.0, progress: Callable[[str], None] | None = None
) -> Path:
    """Download ``remote`` into ``folder / remote.name``, resuming a ``.part`` and verifying it.

    Args:
        remote: the file and its checksum or line count.
        folder: the dataset folder (``<data root>/omniglot``).
        timeout: seconds allowed for connecting and for each read.
        progress: called with one-line status messages.

    Returns:
        The final path.

    Raises:
        DataError: unreachable server, HTTP error, interrupted transfer (the ``.part`` is kept; run again to
            resume), or checksum mismatch (the ``.part`` is deleted); or a file already under the final name
            that fails verification (it is left alone; delete it to fetch it again).
    """
    say = progress or (lambda _msg: None)
    final = Path(folder) / remote.name
    if final.exists():
        problem = _problem(final, remote)
        if problem is None:
            say(f"{remote.name}: already present and verified")
            return final
        raise DataError(f"{final} is already there but {problem}; delete it and fetch again")
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    offset = part.stat().st_size if part.exists() else 0
    resp = _open(remote, offset, timeout)
    if resp is None:  # 416: the .part already holds the whole file (or garbage): check it, else start over
        if _problem(part, remote) is None:
            os.replace(part, final)
            say(f"{remote.name}: completed from an earlier partial download")
            return final
        part.unlink()
        offset, resp = 0, _open(remote, 0, timeout)
    if resp.status == 206 and not _resumed(resp, offset):  # a range we did not ask for: start over
        resp.close()
        offset, resp = 0, _open(remote, 0, timeout)
    with resp:
        append = bool(offset) and _resumed(resp, offset)
        say(f"{remote.name}: {'resuming at byte ' + str(offset) if append else 'downloading'} from {remote.url}")
        expected = resp.headers.get("Content-Length")
        got = 0
        try:
            with open(part, "ab" if append else "wb") as fh:
                for chunk in iter(lambda: resp.read(_CHUNK), b""):
                    fh.write(chunk)
                    got += len(chunk)
        except (OSError, http.client.HTTPException) as exc:
            raise DataError(
                f"downloading {remote.url} was interrupted after {got} bytes ({exc}); run the command again to resume "
                f"from {part}. {_offline_hint()}"
            ) from exc
    if expected is not None and got < int(expected):
        raise DataError(
            f"downloading {remote.url} stopped after {got} of {expected} bytes; run the command again to resume"
        )
    problem = _problem(part, remote)
    if problem is not None:
        part.unlink()
        raise DataError(
            f"the download of {remote.url} is corrupt: {problem}; it was deleted. Run the command again; if it fails "
            f"the same way the file at that address has changed. {_offline_hint()}"
        )
    os.replace(part, final)
    say(f"{remote.name}: verified")
    return final


def fetch_files(
    files: Sequence[RemoteFile],
    folder: str | Path,
    *,
    timeout: float = 10.0,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Download every file of ``files`` into ``folder`` (stops at the first failure).

    A folder this call created is removed again if the first download fails and leaves it empty, so a failed
    offline attempt does not leave an empty ``<root>/omniglot/`` behind.
    """
    folder = Path(folder)
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {folder} ({exc}); choose a writable --data-root") from exc
    if not os.access(folder, os.W_OK):
        raise DataError(f"{folder} is not writable; choose a writable --data-root (or set {DATA_ENV})")
    try:
        return [download(f, folder, timeout=timeout, progress=progress) for f in files]
    except DataError:
        if created and not any(folder.iterdir()):
            folder.rmdir()
        raise


def fetch_omniglot(
    data_root: str | Path | None = None,
    *,
    timeout: float = 10.0,
    files: Sequence[RemoteFile] = OMNIGLOT_FILES,
    progress: Callable[[str], None] | None = None,
) -> list[Path]:
    """Download Omniglot's official zips and the Vinyals split files into ``<data_root>/omniglot/``.

    Args:
        data_root: target data root; None: ``$FEWSHOT_DATA``, else ``./data`` (never the read-only shared copy).
        timeout: seconds allowed for connecting and for each read.
        files: the files to get (default :data:`OMNIGLOT_FILES`; tests pass a local table).
        progress: called with one-line status messages.

    Returns:
        The paths of the verified files.
    """
    root = resolve_fetch_root(data_root).path
    return fetch_files(files, root / "omniglot", timeout=timeout, progress=progress)


FETCHERS: dict[str, Callable[..., list[Path]]] = {"omniglot": fetch_omniglot}
