"""Omniglot's on-disk formats: find them, list their characters, decode their pixels.

Omniglot (Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic program
induction", Science 2015) has 1623 characters from 50 alphabets, each drawn once by 20 people, as 105×105
binary images: the *background* set (30 alphabets, 964 characters, ids 1-964) and the *evaluation* set
(20 alphabets, 659 characters, ids 965-1623).

Three formats are read from ``<data root>/omniglot/``, preferred in this order for each set:

1. the official zip ``images_<set>.zip`` (brendenlake/omniglot ``python/``), members
   ``images_<set>/<Alphabet>/characterNN/XXXX_YY.png`` (PNG mode '1', True = white paper), where XXXX is
   the character id and YY the drawer 01-20;
2. the same tree extracted: ``images_<set>/<Alphabet>/characterNN/XXXX_YY.png``;
3. ``images_<set>.npz`` with a bool array ``images`` of shape (n_characters, 20, 105, 105) (row r is character
   id r + first id of the set, column d is drawer d + 1), named through ``alphabets.csv``
   (``set,alphabet,first_id,num_characters``: id i is ``characterNN`` of the alphabet whose block holds it,
   NN = i - first_id + 1).

If no complete background set is found, the minimal sets ``images_background_small1`` and ``..._small2``
(zip or folder; 5 alphabets each, official too) are read instead, and the set is marked incomplete.

Whatever the format, a character is ``Alphabet/characterNN`` and an image ``Alphabet/characterNN/XXXX_YY``,
and its pixels are the same bits (checked on the real files by the tests). Pixels are returned as bool arrays,
True = paper, exactly as in the PNGs.
"""

from __future__ import annotations

import csv
import io
import os
import re
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from episodes.data_root import shared_data_root
from fewshot.errors import DataError

__all__ = [
    "IMAGE_SIDE",
    "N_DRAWERS",
    "SETS",
    "Character",
    "OmniglotCatalog",
    "SetSource",
    "discover",
    "iter_raw",
]

IMAGE_SIDE = 105
N_DRAWERS = 20
SETS = ("background", "evaluation")
MINIMAL_SETS = ("images_background_small1", "images_background_small2")
FETCH_HINT = "python run_episode.py data fetch omniglot"

_MEMBER = re.compile(
    r"^(?P<top>[^/]+)/(?P<alphabet>[^/]+)/(?P<char>character\d\d)/(?P<cid>\d{4})_(?P<drawer>\d\d)\.png$"
)


@dataclass(frozen=True)
class Character:
    """One Omniglot character.

    Attributes:
        name: ``Alphabet/characterNN``, e.g. ``"Korean/character07"``.
        char_id: the official character id (the ``XXXX`` of its file names), 1-1623.
        set: ``"background"`` or ``"evaluation"``.
    """

    name: str
    char_id: int
    set: str

    @property
    def alphabet(self) -> str:
        return self.name.split("/", 1)[0]

    def image_ids(self) -> list[str]:
        """Ids of its 20 images, drawer 01 to 20: ``Alphabet/characterNN/XXXX_YY``."""
        return [f"{self.name}/{self.char_id:04d}_{d:02d}" for d in range(1, N_DRAWERS + 1)]


@dataclass(frozen=True)
class SetSource:
    """Where one set (background or evaluation) is read from.

    Attributes:
        set: ``"background"`` or ``"evaluation"``.
        kind: ``"zip"``, ``"folder"`` or ``"npz"``; for the minimal sets ``"minimal:zip"``, ``"minimal:folder"``
            or ``"minimal:folder+zip"``.
        paths: the files read (zips, folders, or the npz and ``alphabets.csv``); they are fingerprinted.
        complete: False when only the minimal sets (``images_background_small1/2``) were found.
        characters: the characters, sorted by id.
        locations: per character, where its 20 images are: member names (zip), file paths (folder) or the
            npz row (npz).
    """

    set: str
    kind: str
    paths: tuple[Path, ...]
    complete: bool
    characters: tuple[Character, ...]
    locations: tuple = field(repr=False)

    def describe(self) -> str:
        names = ", ".join(p.name for p in self.paths)
        return f"{self.kind.removeprefix('minimal:')} ({names}{'' if self.complete else '; minimal sets only'})"


@dataclass(frozen=True)
class OmniglotCatalog:
    """Everything found under ``<data root>/omniglot/``, listed without decoding any image.

    Attributes:
        folder: the ``omniglot`` folder.
        sets: one :class:`SetSource` per set found, background first.
    """

    folder: Path
    sets: tuple[SetSource, ...]

    @property
    def characters(self) -> list[Character]:
        """All characters found, sorted by id (the order of the decoded store)."""
        return sorted((c for s in self.sets for c in s.characters), key=lambda c: c.char_id)

    def get_set(self, name: str) -> SetSource | None:
        return next((s for s in self.sets if s.set == name), None)

    def describe(self) -> dict[str, str]:
        return {s.set: s.describe() for s in self.sets}


def _corrupt(path: Path, what: str) -> DataError:
    return DataError(
        f"{path} is corrupt or truncated ({what}); delete it and fetch it again ({FETCH_HINT}), "
        "or point --data-root at a good copy"
    )


# ----------------------------------------------------------------------------------------------- listing


def _group_members(entries: list[tuple[str, str]], where: Path, expected_top: str) -> tuple[list, list]:
    """Group ``(relative name, location)`` pairs into characters, checking the layout and the 20 drawers."""
    chars: dict[str, dict[int, str]] = {}
    ids: dict[str, int] = {}
    for rel, loc in entries:
        m = _MEMBER.match(rel)
        if m is None:
            raise DataError(
                f"{where}: {rel!r} does not follow the Omniglot layout "
                f"{expected_top}/<Alphabet>/characterNN/XXXX_YY.png; remove the stray file or re-fetch ({FETCH_HINT})"
            )
        if m["top"] != expected_top:
            raise DataError(f"{where}: {rel!r} should be under {expected_top}/, found under {m['top']}/")
        name, cid, drawer = f"{m['alphabet']}/{m['char']}", int(m["cid"]), int(m["drawer"])
        if ids.setdefault(name, cid) != cid:
            raise DataError(f"{where}: {name} holds images of two character ids ({ids[name]:04d} and {cid:04d})")
        chars.setdefault(name, {})[drawer] = loc
    characters, locations = [], []
    for name, drawers in chars.items():
        if sorted(drawers) != list(range(1, N_DRAWERS + 1)):
            raise DataError(
                f"{where}: {name} has drawers {sorted(drawers)}, expected exactly 01..20; the copy is incomplete, "
                f"fetch it again ({FETCH_HINT})"
            )
        characters.append((ids[name], name))
        locations.append(tuple(drawers[d] for d in range(1, N_DRAWERS + 1)))
    if len({cid for cid, _ in characters}) != len(characters):
        raise DataError(f"{where}: two characters share an id; the copy is inconsistent, fetch it again")
    order = sorted(range(len(characters)), key=lambda i: characters[i][0])
    return [characters[i] for i in order], [locations[i] for i in order]


_zip_listings: dict[tuple[str, int, int], tuple[list, list]] = {}  # parsing 19 280 zip entries takes ~0.2 s


def _list_zip(path: Path) -> tuple[list, list]:
    st = path.stat()
    key = (str(path.absolute()), st.st_size, st.st_mtime_ns)
    if key not in _zip_listings:
        try:
            with zipfile.ZipFile(path) as zf:
                names = zf.namelist()
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc
        entries = [(n, n) for n in names if n.endswith(".png") and not n.startswith("__MACOSX/")]
        _zip_listings[key] = _group_members(entries, path, path.stem)
    return _zip_listings[key]


def _list_folder(path: Path) -> tuple[list, list]:
    def subdirs(folder: str) -> list[os.DirEntry]:
        with os.scandir(folder) as it:
            return sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)

    entries = [  # plain strings and scandir: 32 460 files are listed in a few tens of milliseconds
        (f"{path.name}/{alphabet.name}/{char.name}/{f.name}", f.path)
        for alphabet in subdirs(str(path))
        if alphabet.is_dir()
        for char in subdirs(alphabet.path)
        if char.is_dir()
        for f in subdirs(char.path)
        if f.name.endswith(".png")
    ]
    return _group_members(entries, path, path.name)


def _read_alphabets(csv_path: Path, set_name: str, npz: Path) -> list[tuple[str, int, int]]:
    """The ``(alphabet, first_id, num_characters)`` blocks of ``set_name`` from ``alphabets.csv``."""
    if not csv_path.is_file():
        raise DataError(
            f"{npz.name} stores unnamed characters; naming them needs {csv_path} (columns "
            "set,alphabet,first_id,num_characters), which is missing. Copy alphabets.csv from the folder the npz "
            f"came from (on these machines: {shared_data_root() / 'omniglot' / 'alphabets.csv'}), or use the official "
            f"zips instead ({FETCH_HINT})"
        )
    try:
        with open(csv_path, newline="") as fh:
            rows = [r for r in csv.DictReader(line for line in fh if not line.startswith("#"))]
        blocks = [(r["alphabet"], int(r["first_id"]), int(r["num_characters"])) for r in rows if r["set"] == set_name]
    except (KeyError, ValueError, TypeError) as exc:
        raise DataError(
            f"{csv_path} is not a valid alphabets.csv (expected columns set,alphabet,first_id,num_characters): {exc}"
        ) from exc
    blocks.sort(key=lambda b: b[1])
    for (a, first, n), (_, nxt, _) in zip(blocks, blocks[1:], strict=False):
        if first + n != nxt:
            raise DataError(
                f"{csv_path}: the id block of {a} ({first}..{first + n - 1}) does not end where the next begins ({nxt})"
            )
    return blocks


def _npy_header(zf: zipfile.ZipFile, npz: Path) -> tuple[tuple[int, ...], np.dtype, zipfile.ZipExtFile]:
    if "images.npy" not in zf.namelist():
        raise DataError(f"{npz} has no 'images' array (arrays: {zf.namelist()}); expected the Omniglot npz format")
    fh = zf.open("images.npy")
    version = np.lib.format.read_magic(fh)
    reader = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, fortran, dtype = reader(fh)
    if fortran or dtype != np.bool_ or len(shape) != 4 or shape[1:] != (N_DRAWERS, IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"{npz}: 'images' is {dtype}{list(shape)}{' (Fortran order)' if fortran else ''}, expected a C-order bool "
            f"array (n_characters, {N_DRAWERS}, {IMAGE_SIDE}, {IMAGE_SIDE})"
        )
    return shape, dtype, fh


def _list_npz(path: Path, set_name: str) -> tuple[list, list, Path]:
    csv_path = path.parent / "alphabets.csv"
    blocks = _read_alphabets(csv_path, set_name, path)
    try:
        with zipfile.ZipFile(path) as zf:
            shape, _, fh = _npy_header(zf, path)
            fh.close()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as exc:
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc
    total = sum(n for _, _, n in blocks)
    if total != shape[0]:
        raise DataError(
            f"{path} holds {shape[0]} characters but {csv_path.name} lists {total} for the {set_name} set; "
            "use the alphabets.csv that came with this npz"
        )
    base = blocks[0][1]
    characters = [(first + k, f"{a}/character{k + 1:02d}") for a, first, n in blocks for k in range(n)]
    return characters, [cid - base for cid, _ in characters], csv_path


def discover(folder: str | Path) -> OmniglotCatalog:
    """List the Omniglot sets found in ``folder`` (``<data root>/omniglot``) without decoding images.

    Raises:
        DataError: nothing usable is there, or a file found is corrupt or inconsistent.
    """
    folder = Path(folder)
    sets = []
    for set_name in SETS:
        stem = f"images_{set_name}"
        source = None
        if (folder / f"{stem}.zip").is_file():
            source = ("zip", (folder / f"{stem}.zip",), *_list_zip(folder / f"{stem}.zip"))
        elif (folder / stem).is_dir() and any((folder / stem).iterdir()):
            source = ("folder", (folder / stem,), *_list_folder(folder / stem))
        elif (folder / f"{stem}.npz").is_file():
            chars, rows, csv_path = _list_npz(folder / f"{stem}.npz", set_name)
            source = ("npz", (folder / f"{stem}.npz", csv_path), chars, rows)
        elif set_name == "background":
            source = _minimal_sets(folder)
        if source is None:
            continue
        kind, paths, chars, locs = source
        sets.append(
            SetSource(
                set=set_name,
                kind=kind,
                paths=paths,
                complete=kind in ("zip", "folder", "npz"),  # False for the union of the minimal sets
                characters=tuple(Character(name, cid, set_name) for cid, name in chars),
                locations=tuple(locs),
            )
        )
    if not sets:
        raise DataError(
            f"no Omniglot data in {folder}: expected images_background.zip and images_evaluation.zip (or the extracted "
            f"folders, or the npz pair with alphabets.csv). Download them with `{FETCH_HINT}`, or point --data-root "
            f"(or $FEWSHOT_DATA) at a folder holding omniglot/ (on these machines: {shared_data_root()})"
        )
    return OmniglotCatalog(folder=folder, sets=tuple(sets))


def _minimal_sets(folder: Path) -> tuple | None:
    """The union of ``images_background_small1`` and ``..._small2`` (zip or folder), or None if neither."""
    found = []
    for stem in MINIMAL_SETS:
        if (folder / f"{stem}.zip").is_file():
            found.append(("zip", folder / f"{stem}.zip", *_list_zip(folder / f"{stem}.zip")))
        elif (folder / stem).is_dir() and any((folder / stem).iterdir()):
            found.append(("folder", folder / stem, *_list_folder(folder / stem)))
    if not found:
        return None
    merged: dict[int, tuple[str, tuple]] = {}
    for kind, path, chars, locs in found:
        for (cid, name), loc in zip(chars, locs, strict=True):
            merged.setdefault(cid, (name, (kind, path, loc)))  # Greek and Latin are in both: keep the first
    kinds = {k for k, *_ in found}
    chars = [(cid, merged[cid][0]) for cid in sorted(merged)]
    return (
        "minimal:" + "+".join(sorted(kinds)),
        tuple(p for _, p, *_ in found),
        chars,
        [merged[cid][1] for cid in sorted(merged)],
    )


# ----------------------------------------------------------------------------------------------- decoding


def _decode_png(data: bytes, where: str) -> np.ndarray:
    try:
        im = Image.open(io.BytesIO(data))
        im.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as exc:
        raise DataError(
            f"{where} is not a readable PNG ({exc}); the copy is corrupt, fetch it again ({FETCH_HINT})"
        ) from exc
    if im.size != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"{where} is {im.size[0]}×{im.size[1]}, expected {IMAGE_SIDE}×{IMAGE_SIDE} (the original Omniglot PNGs); "
            "resized copies cannot be mixed in, use the official files"
        )
    return paper_mask(im)


def paper_mask(im: Image.Image) -> np.ndarray:
    """bool ``(H, W)``, True = paper: a mode '1' image as stored, any other (a re-saved grey or colour copy, a
    user's drawing) converted to grey and thresholded at mid-grey."""
    if im.mode == "1":
        return np.asarray(im, dtype=bool)
    return np.asarray(im.convert("L")) >= 128


def _iter_zip(path: Path, chars: tuple, locs: tuple) -> Iterator[tuple[Character, np.ndarray]]:
    try:
        with zipfile.ZipFile(path) as zf:
            for char, members in zip(chars, locs, strict=True):
                yield char, np.stack([_decode_png(zf.read(m), f"{path}:{m}") for m in members])
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc


def _iter_npz(path: Path, chars: tuple, rows: tuple) -> Iterator[tuple[Character, np.ndarray]]:
    """Stream the rows of ``images.npy`` out of the npz: one character in memory at a time."""
    per_row = N_DRAWERS * IMAGE_SIDE * IMAGE_SIDE
    wanted = dict(zip(rows, chars, strict=True))
    try:
        with zipfile.ZipFile(path) as zf:
            shape, _, fh = _npy_header(zf, path)
            with fh:
                for r in range(max(wanted) + 1):
                    buf = fh.read(per_row)
                    if len(buf) != per_row:
                        raise EOFError(f"row {r} of {shape[0]} is cut short")
                    if r in wanted:
                        yield wanted[r], np.frombuffer(buf, dtype=bool).reshape(N_DRAWERS, IMAGE_SIDE, IMAGE_SIDE)
    except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise _corrupt(path, f"{type(exc).__name__}: {exc}") from exc


def iter_raw(source: SetSource) -> Iterator[tuple[Character, np.ndarray]]:
    """Decode a set, one character at a time (in id order within each file read).

    Yields:
        ``(character, pixels)`` with ``pixels`` a bool array ``(20, 105, 105)``, True = paper, drawer 01 first.

    Raises:
        DataError: a file is corrupt or truncated, or an image is not 105×105 (naming the file).
    """
    if source.kind == "zip":
        yield from _iter_zip(source.paths[0], source.characters, source.locations)
    elif source.kind == "npz":
        yield from _iter_npz(source.paths[0], source.characters, source.locations)
    elif source.kind == "folder":
        for char, files in zip(source.characters, source.locations, strict=True):
            yield char, np.stack([_decode_png(Path(f).read_bytes(), f) for f in files])
    else:  # minimal sets: each location is (kind, path, members); read one file at a time
        for path in source.paths:
            mine = [(c, loc) for c, (_, p, loc) in zip(source.characters, source.locations, strict=True) if p == path]
            kind = "zip" if path.suffix == ".zip" else "folder"
            sub = SetSource(source.set, kind, (path,), False, tuple(c for c, _ in mine), tuple(x for _, x in mine))
            yield from iter_raw(sub)
