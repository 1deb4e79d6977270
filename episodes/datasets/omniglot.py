"""Omniglot loader: the Vinyals and Lake protocols, registered as dataset ``omniglot``.

Data: Lake, Salakhutdinov & Tenenbaum, "Human-level concept learning through probabilistic program
induction", Science 2015 (1623 characters × 20 drawers; formats in
:mod:`episodes.datasets.omniglot_sources`, preprocessing in :mod:`episodes.datasets.omniglot_store`).

Protocols (``load(protocol, split, ...)``, splits ``train``, ``val``, ``test``, ``trainval``):

* ``vinyals`` (default): Vinyals et al., "Matching Networks for One Shot Learning", NeurIPS 2016
  (arXiv:1606.04080), with the split files of Snell et al., "Prototypical Networks for Few-shot Learning",
  NeurIPS 2017 (arXiv:1703.05175): ``<root>/omniglot/splits/vinyals/{split}.txt``, one line
  ``Alphabet/characterNN/rotDDD`` per class. Each rotation is its own class (class name = the line,
  ``class_rotation`` = DDD/90 quarter turns counter-clockwise, the direction of ProtoNets' ``PIL.Image.rotate``
  and of ``numpy.rot90`` with positive k): 4112 / 688 / 1692 classes (1028 / 172 / 423 characters), trainval
  4800 = train ∪ val.
* ``lake``: the dataset authors' split, alphabets never crossing: meta-test = the 20 evaluation alphabets
  (659 characters); meta-train/val = the 30 background alphabets, of which the 5 with the fewest characters
  are held out for validation, the rule and the choice of Meta-Dataset (Triantafillou et al., "Meta-Dataset:
  A Dataset of Datasets for Learning to Learn from Few Examples", ICLR 2020, arXiv:1903.03096):
  Blackfoot_(Canadian_Aboriginal_Syllabics) 14, Ojibwe_(Canadian_Aboriginal_Syllabics) 14,
  Inuktitut_(Canadian_Aboriginal_Syllabics) 16, Tagalog 17, Alphabet_of_the_Magi 20 characters. So train 883,
  val 81, test 659, trainval (all background) 964 characters; one class per character by default.

Options (keyword arguments of ``load``; stored in ``ClassSplit.meta`` and in the fingerprint):

* ``image_size`` (28), ``invert`` (True), ``resample`` (``"lanczos"``): see the store module;
* ``rotation``: ``"classes"`` (Vinyals default: each rotation a class), ``"augment"`` (one class per
  character at rotation 0; ``meta["rotation"] == "augment"`` tells the sampler to give each class a random
  quarter turn at draw time, as in MAML), ``"none"`` (one class per character, rotation 0; Lake default).
  With ``augment``/``none`` the Vinyals protocol keeps the ``rot000`` lines only, and a class is named after
  its character (``Alphabet/characterNN``).

``class_groups`` holds each class's alphabet (for within-alphabet episodes). ``ClassSplit.fingerprint``
hashes the per-character content digests of the split's characters (format-independent: the zips and the
npz give the same fingerprint), the protocol, split, options, and the split-file bytes.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, UnidentifiedImageError

from episodes.data_root import explain_data_root
from episodes.datasets import DATASETS
from episodes.datasets.omniglot_sources import FETCH_HINT, N_DRAWERS, OmniglotCatalog, discover, paper_mask
from episodes.datasets.omniglot_store import STORE_VERSION, check_options, load_store, preprocess
from episodes.split import ClassSplit
from fewshot.errors import ConfigError, DataError

__all__ = ["LAKE_VAL_ALPHABETS", "Omniglot", "ROTATION_MODES", "SPLITS"]

SPLITS = ("train", "val", "test", "trainval")
ROTATION_MODES = ("classes", "augment", "none")
DEFAULT_ROTATION = {"vinyals": "classes", "lake": "none"}
LAKE_VAL_ALPHABETS = (
    "Blackfoot_(Canadian_Aboriginal_Syllabics)",
    "Ojibwe_(Canadian_Aboriginal_Syllabics)",
    "Inuktitut_(Canadian_Aboriginal_Syllabics)",
    "Tagalog",
    "Alphabet_of_the_Magi",
)
_LINE = re.compile(r"^(?P<char>[^/\s]+/character\d\d)/rot(?P<deg>000|090|180|270)$")

# A class plan: (class name, character name, quarter turns), in class order.
Plan = list[tuple[str, str, int]]


def _vinyals_plan(catalog: OmniglotCatalog, split: str, rotation: str) -> tuple[Plan, bytes]:
    path = catalog.folder / "splits" / "vinyals" / f"{split}.txt"
    if not path.is_file():
        raise DataError(
            f"the Vinyals split file {path} is missing; download it with `{FETCH_HINT}` "
            "(it fetches the zips and the split files), or point --data-root at a copy that has splits/vinyals/"
        )
    raw = path.read_bytes()
    known = {c.name for c in catalog.characters}
    plan: Plan = []
    seen: dict[str, int] = {}
    for lineno, line in enumerate(raw.decode("utf-8").splitlines(), 1):
        line = line.strip()
        if not line:
            continue
        m = _LINE.match(line)
        if m is None:
            raise DataError(
                f"{path}:{lineno}: {line!r} is not of the form Alphabet/characterNN/rotDDD (DDD in 000, 090, 180, 270)"
            )
        if m["char"] not in known:
            partial = [s.describe() for s in catalog.sets if not s.complete]
            extra = f"; only partial data was found ({'; '.join(partial)})" if partial else ""
            raise DataError(
                f"{path}:{lineno} names {m['char']!r}, which is not in the Omniglot data in {catalog.folder}{extra}; "
                f"get the complete images_background and images_evaluation sets (`{FETCH_HINT}`)"
            )
        if line in seen:
            raise DataError(f"{path}:{lineno}: {line!r} repeats line {seen[line]}; each class must be listed once")
        seen[line] = lineno
        k = int(m["deg"]) // 90
        if rotation == "classes":
            plan.append((line, m["char"], k))
        elif k == 0:
            plan.append((m["char"], m["char"], 0))
    return plan, raw


def _lake_plan(catalog: OmniglotCatalog, split: str, rotation: str) -> tuple[Plan, bytes]:
    need = ("evaluation",) if split == "test" else ("background",)
    for set_name in need:
        source = catalog.get_set(set_name)
        if source is None or not source.complete:
            found = source.describe() if source else "nothing"
            raise DataError(
                f"the lake protocol's {split} split needs the complete images_{set_name} set, but {catalog.folder} has "
                f"{found}; get it with `{FETCH_HINT}` or point --data-root at a complete copy"
            )
    chars = catalog.get_set(need[0]).characters
    if split == "train":
        chars = tuple(c for c in chars if c.alphabet not in LAKE_VAL_ALPHABETS)
    elif split == "val":
        chars = tuple(c for c in chars if c.alphabet in LAKE_VAL_ALPHABETS)
    turns = range(4) if rotation == "classes" else (0,)
    plan = [(f"{c.name}/rot{90 * k:03d}" if rotation == "classes" else c.name, c.name, k) for c in chars for k in turns]
    return plan, json.dumps({"lake_val_alphabets": LAKE_VAL_ALPHABETS}).encode()


def _plan(catalog: OmniglotCatalog, protocol: str, split: str, rotation: str) -> tuple[Plan, bytes]:
    if split not in SPLITS:
        raise ConfigError(
            f"unknown Omniglot split {split!r} for protocol {protocol!r}; expected one of {', '.join(SPLITS)}"
        )
    return (_vinyals_plan if protocol == "vinyals" else _lake_plan)(catalog, split, rotation)


def _check_protocol(protocol: str, rotation: str | None) -> str:
    if protocol not in DEFAULT_ROTATION:
        raise ConfigError(f"unknown Omniglot protocol {protocol!r}; expected one of {', '.join(DEFAULT_ROTATION)}")
    rotation = DEFAULT_ROTATION[protocol] if rotation is None else rotation
    if rotation not in ROTATION_MODES:
        raise ConfigError(f"rotation must be one of {', '.join(ROTATION_MODES)}, got {rotation!r}")
    return rotation


def _catalog(data_root: str | Path | None) -> OmniglotCatalog:
    root = explain_data_root(data_root, "omniglot")
    folder = root.path / "omniglot"
    if not folder.is_dir():
        raise DataError(
            f"no omniglot/ folder in the data root {root.path} ({root.reason}); download Omniglot with `{FETCH_HINT}` "
            "or point --data-root (or $FEWSHOT_DATA) at a folder holding omniglot/"
        )
    return discover(folder)


@DATASETS.register("omniglot")
class Omniglot:
    """Omniglot under the ``vinyals`` (default) and ``lake`` protocols; see the module docstring.

    Example:
        >>> from episodes.datasets import load_split
        >>> split = load_split("omniglot", "vinyals", "test")  # doctest: +SKIP
        >>> split.n_classes, split.images.shape  # doctest: +SKIP
        (1692, (8460, 28, 28))
    """

    protocols = ("vinyals", "lake")

    @staticmethod
    def splits(protocol: str) -> tuple[str, ...]:
        _check_protocol(protocol, None)
        return SPLITS

    @classmethod
    def load(
        cls,
        protocol: str = "vinyals",
        split: str = "train",
        data_root: str | Path | None = None,
        *,
        image_size: int = 28,
        invert: bool = True,
        rotation: str | None = None,
        resample: str = "lanczos",
    ) -> ClassSplit:
        """Load one split as a :class:`~episodes.split.ClassSplit` (images of the split's characters only).

        Args:
            protocol: ``"vinyals"`` or ``"lake"``.
            split: ``"train"``, ``"val"``, ``"test"`` or ``"trainval"``.
            data_root: the data root; None resolves it (see :mod:`episodes.data_root`).
            image_size: side of the stored images (105 = original size).
            invert: strokes bright (255) on dark paper (0).
            rotation: ``"classes"``, ``"augment"`` or ``"none"``; None takes the protocol's default.
            resample: ``"lanczos"`` or ``"nearest"``.

        Returns:
            A split whose ``images`` is uint8 ``(20 * n_characters, image_size, image_size)``.

        Raises:
            ConfigError: unknown protocol, split or option value.
            DataError: data or split file missing or corrupt (the message says how to get it).
        """
        rotation = _check_protocol(protocol, rotation)
        options = check_options(image_size, invert, resample)
        catalog = _catalog(data_root)
        plan, split_bytes = _plan(catalog, protocol, split, rotation)
        if not plan:
            raise DataError(
                f"the {protocol} protocol's {split} split has no classes with rotation={rotation!r} in "
                f"{catalog.folder}; check its split file or use rotation='classes'"
            )
        store = load_store(catalog, **options)
        position = store.positions()
        chars: dict[str, int] = {}  # character -> its slot in this split's image array
        for _, char, _ in plan:
            chars.setdefault(char, len(chars))
        rows = np.concatenate([np.arange(N_DRAWERS) + N_DRAWERS * position[c] for c in chars])
        by_name = {c.name: c for c in store.characters}
        fingerprint = {
            "dataset": "omniglot",
            "protocol": protocol,
            "split": split,
            "options": {**options, "rotation": rotation},
            "store_version": STORE_VERSION,
            "characters": hashlib.sha256("".join(store.digests[position[c]] for c in chars).encode()).hexdigest(),
            "split_file": hashlib.sha256(split_bytes).hexdigest(),
        }
        return ClassSplit(
            dataset="omniglot",
            protocol=protocol,
            split=split,
            images=store.images[rows],
            image_ids=[i for c in chars for i in by_name[c].image_ids()],
            class_names=[name for name, _, _ in plan],
            class_images=[np.arange(N_DRAWERS, dtype=np.int64) + N_DRAWERS * chars[c] for _, c, _ in plan],
            class_rotation=np.array([k for _, _, k in plan], dtype=np.int64),
            class_groups=[c.split("/", 1)[0] for _, c, _ in plan],
            fingerprint=hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest(),
            meta={**options, "rotation": rotation},
        )

    @staticmethod
    def decode_file(
        file: str | Path, /, *, image_size: int = 28, invert: bool = True, resample: str = "lanczos", **_selection: Any
    ) -> np.ndarray:
        """One image file preprocessed exactly as the stored Omniglot images (a trained model's own input).

        The image is read as the original scans are (paper = pixels at or above mid-grey), then goes through
        :func:`~episodes.datasets.omniglot_store.preprocess` with the run's options. ``_selection`` takes the
        options that choose classes, not pixels (``rotation``), and ignores them.

        Returns:
            uint8 ``(image_size, image_size)``.

        Raises:
            DataError: the file is not a readable image, is not square, or is mostly dark (strokes must be dark on
                light paper, as in the original scans; the message names the file).
        """
        options = check_options(image_size, invert, resample)
        try:
            with Image.open(file) as im:
                paper = paper_mask(im)
        except (UnidentifiedImageError, OSError, SyntaxError) as exc:
            raise DataError(f"{file} is not a readable image ({exc}); remove or replace it") from exc
        h, w = paper.shape
        if h != w:
            raise DataError(
                f"{file} is {w}x{h}; Omniglot models take square character images (the originals are 105x105): "
                "crop or pad it to a square"
            )
        if paper.mean() < 0.5:
            raise DataError(
                f"{file} is mostly dark ({100 * (1 - paper.mean()):.0f}% of its pixels below mid-grey); Omniglot "
                "models expect dark strokes on light paper, as in the original scans: invert it first "
                "(PIL.ImageOps.invert)"
            )
        return preprocess(paper[None], **options)[0]

    @classmethod
    def info(cls, data_root: str | Path | None = None, **options: Any) -> dict:
        """What is on disk, without decoding images: sources, characters, classes and images per split.

        Args:
            data_root: the data root; None resolves it.
            **options: ``rotation`` applies to both protocols (default: each protocol's own).

        Returns:
            ``{"dataset", "present", "folder", "sources", "characters", "protocols"}`` where
            ``protocols[p]`` is ``{"rotation", "splits": {split: {"classes", "images", "unique_images"}}}`` or
            ``{"error": message}``; if absent, ``{"dataset", "present": False, "reason"}``.
        """
        try:
            catalog = _catalog(data_root)
        except DataError as exc:
            return {"dataset": "omniglot", "present": False, "reason": str(exc)}
        counts = {s.set: len(s.characters) for s in catalog.sets}
        out: dict[str, Any] = {
            "dataset": "omniglot",
            "present": True,
            "folder": str(catalog.folder),
            "sources": catalog.describe(),
            "characters": {**counts, "total": sum(counts.values())},
            "protocols": {},
        }
        for protocol in cls.protocols:
            rotation = _check_protocol(protocol, options.get("rotation"))
            try:
                splits = {}
                for split in SPLITS:
                    plan, _ = _plan(catalog, protocol, split, rotation)
                    n_chars = len({c for _, c, _ in plan})
                    splits[split] = {
                        "classes": len(plan),
                        "images": N_DRAWERS * len(plan),
                        "unique_images": N_DRAWERS * n_chars,
                    }
                out["protocols"][protocol] = {"rotation": rotation, "splits": splits}
            except DataError as exc:
                out["protocols"][protocol] = {"error": str(exc)}
        return out
