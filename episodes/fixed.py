"""Fixed evaluation episodes: a small JSON file naming every class and image of every episode.

A file pins the evaluation set across runs, machines and code versions: it stores the dataset-level class
names, the quarter turns and the image ids of each episode (never positional indices), plus the dataset,
protocol, split and the split's fingerprint. :meth:`FixedEpisodes.bind` resolves the names back to indices
of a loaded :class:`~episodes.split.ClassSplit` and refuses a split that differs in any of those four fields,
so two methods evaluated on "the same file" really saw the same images.

File layout (``format_version`` 2; one header field per line, one episode per line)::

    {
      "format": "fewshot-fixed-episodes",
      "format_version": 2,
      "dataset": "omniglot", "protocol": "vinyals", "split": "test", "fingerprint": "…",
      "n_way": 5, "n_shot": 1, "n_query": 15, "seed": 0, "count": 600,
      "within_alphabet": false, "rotation_augment": false, "meta": {…},
      "sha256": "…",
      "episodes": [
        {"index": 0, "classes": [5 sorted names], "rotation": [5 ints], "support": [5 lists of 1 id],
         "query": [5 lists of 15 ids]},
        …
      ]
    }

``rotation[j]`` is the total number of counter-clockwise quarter turns applied to every stored image of
``classes[j]`` (its class rotation plus any augmentation), as in :class:`~episodes.sampler.EpisodeIndices`.

``sha256`` (:meth:`FixedEpisodes.file_digest`) covers every other field, the request (dataset fingerprint,
protocol, split, sizes, seed, count, options) and the episodes, computed when the file is written; :meth:`load`
recomputes it, so a file edited by hand or damaged is refused with the command that regenerates it. Version 1
files (without it) are refused the same way.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from episodes.cache import atomic_write_bytes
from episodes.episode import Episode
from episodes.sampler import EpisodeBuilder, EpisodeIndices, EpisodeSampler, split_label
from episodes.split import ClassSplit
from fewshot.errors import ConfigError, DataError

__all__ = [
    "FORMAT", "FORMAT_VERSION", "BoundEpisodes", "FixedEpisode", "FixedEpisodes", "make_fixed_episodes",
    "regenerate_command",
]  # fmt: skip

FORMAT = "fewshot-fixed-episodes"
FORMAT_VERSION = 2
_CONTENT_FIELDS = ("dataset", "protocol", "split", "fingerprint", "n_way", "n_shot", "n_query")
_HEADER_FIELDS = (*_CONTENT_FIELDS, "seed", "count", "within_alphabet", "rotation_augment")


@dataclass(frozen=True)
class FixedEpisode:
    """One episode of a file, by name.

    Attributes:
        index: the episode's index (its index in the sampler that drew it).
        classes: ``n_way`` dataset-level class names, sorted (label ``j`` is ``classes[j]``).
        rotation: ``n_way`` total quarter turns, one per class.
        support: per class, its ``n_shot`` image ids in row order.
        query: per class, its ``n_query`` image ids in row order.
    """

    index: int
    classes: tuple[str, ...]
    rotation: tuple[int, ...]
    support: tuple[tuple[str, ...], ...]
    query: tuple[tuple[str, ...], ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "classes": list(self.classes),
            "rotation": list(self.rotation),
            "support": [list(s) for s in self.support],
            "query": [list(q) for q in self.query],
        }


def _canonical(obj: Any) -> Any:
    """``obj`` as plain JSON data (tuples become lists, unknown objects their ``str``)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _digest(head: dict[str, Any], episodes: Sequence[FixedEpisode]) -> str:
    """sha256 of the canonical JSON of a file's header fields (without ``sha256``) and its episodes."""
    body = {**head, "episodes": [ep.to_dict() for ep in episodes]}
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode("utf-8")).hexdigest()


def regenerate_command(
    dataset: str, protocol: str, split: str, n_way: int, n_shot: int, n_query: int, *, seed: int, count: int,
    within_alphabet: bool = False, path: str | Path | None = None,
) -> str:  # fmt: skip
    """The ``run_episode.py episodes`` command that writes the fixed episodes of this request to ``path``."""
    flags = [
        f"--dataset {dataset}", f"--protocol {protocol}", f"--split {split}", f"--n-way {n_way}",
        f"--n-shot {n_shot}", f"--n-query {n_query}", f"--seed {seed}", f"--count {count}",
    ]  # fmt: skip
    if within_alphabet:
        flags.append("--within-alphabet")
    return f"run_episode.py episodes {' '.join(flags)} --save {path or 'FILE'} --force"


@dataclass(frozen=True)
class FixedEpisodes:
    """A fixed set of evaluation episodes, tied to one split of one dataset (see the module docstring).

    Build one with :func:`make_fixed_episodes`, write it with :meth:`save`, read it with :meth:`load`, and
    get tensors with :meth:`bind`.

    Example:
        >>> fixed = make_fixed_episodes(split, 5, 1, 15, seed=0, count=600)  # doctest: +SKIP
        >>> fixed.save("episodes/omniglot-test-5w1s.json")  # doctest: +SKIP
        >>> episodes = FixedEpisodes.load("episodes/omniglot-test-5w1s.json").bind(split)  # doctest: +SKIP
    """

    dataset: str
    protocol: str
    split: str
    fingerprint: str
    meta: dict
    n_way: int
    n_shot: int
    n_query: int
    seed: int
    within_alphabet: bool
    rotation_augment: bool
    episodes: tuple[FixedEpisode, ...]
    source: str | None = field(default=None, compare=False)  # file it was loaded from, for messages

    @property
    def count(self) -> int:
        return len(self.episodes)

    # --------------------------------------------------------------------------------------- serialization
    def header(self) -> dict[str, Any]:
        """Everything but the episodes, as JSON data, in file order (``sha256`` last)."""
        fields = {k: getattr(self, k) for k in _HEADER_FIELDS}
        head = {"format": FORMAT, "format_version": FORMAT_VERSION, **fields, "meta": _canonical(self.meta)}
        return {**head, "sha256": _digest(head, self.episodes)}

    def file_digest(self) -> str:
        """sha256 (hex) of the canonical JSON of the whole file but this digest: the request and the episodes."""
        return self.header()["sha256"]

    def to_json(self) -> str:
        """The file's text: the header one field per line, then one episode per line."""
        lines = [
            f"  {json.dumps(k)}: {json.dumps(v, sort_keys=True, ensure_ascii=False)}," for k, v in self.header().items()
        ]
        eps = ",\n".join(f"    {json.dumps(ep.to_dict(), ensure_ascii=False)}" for ep in self.episodes)
        return "{\n" + "\n".join(lines) + '\n  "episodes": [\n' + eps + "\n  ]\n}\n"

    def content_hash(self) -> str:
        """sha256 (hex) of the canonical JSON of the episode content.

        The content is the dataset, protocol, split, fingerprint, the three sizes and the episodes; how they
        were generated (seed, options, format version, file layout) is left out, so equal episodes on equal
        data hash equally.
        """
        content = {k: getattr(self, k) for k in _CONTENT_FIELDS}
        content["episodes"] = [ep.to_dict() for ep in self.episodes]
        text = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return hashlib.sha256(text.encode("utf-8")).hexdigest()

    def save(self, path: str | Path, *, overwrite: bool = False) -> Path:
        """Write the file atomically (temp file + ``os.replace``); return its path.

        Saving over an identical file is a no-op. Raises DataError if ``path`` holds anything else, unless
        ``overwrite=True``.
        """
        path = Path(path)
        text = self.to_json()
        if path.exists():
            if path.is_dir():
                raise DataError(f"cannot save fixed episodes to {str(path)!r}: it is a folder; give a file name")
            if path.read_bytes() == text.encode("utf-8"):
                return path
            if not overwrite:
                raise DataError(
                    f"refusing to overwrite {str(path)!r}: it holds different content than these "
                    f"{self.count} episodes (new content hash {self.content_hash()[:12]}); pass overwrite=True "
                    "(--force on the command line) or choose another file name"
                )
        try:
            atomic_write_bytes(path, text.encode("utf-8"))
        except OSError as exc:
            raise DataError(
                f"cannot write fixed episodes to {str(path)!r} ({exc}); choose a writable location"
            ) from exc
        return path

    @classmethod
    def load(cls, path: str | Path) -> FixedEpisodes:
        """Read and validate a file written by :meth:`save`.

        Raises:
            DataError: the file is missing, unreadable, not JSON, of another format or version, or
                internally inconsistent (the message names the file and the first problem).
        """
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise DataError(
                f"fixed episodes file {str(path)!r} does not exist; create it with `run_episode.py episodes "
                "... --save FILE`"
            ) from None
        except (OSError, UnicodeDecodeError) as exc:
            raise DataError(f"cannot read fixed episodes file {str(path)!r}: {exc}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DataError(
                f"fixed episodes file {str(path)!r} is not valid JSON ({exc.msg} at line {exc.lineno}, column "
                f"{exc.colno}); it is corrupt: regenerate it with `run_episode.py episodes ... --save FILE`"
            ) from None
        fixed = _from_dict(data, str(path))
        if data.get("sha256") != fixed.file_digest():
            raise DataError(
                f"fixed episodes file {str(path)!r} fails its integrity check (its content differs from the SHA-256 "
                f"stored when it was written: edited by hand or damaged), so it is not used; regenerate it with "
                f"`{fixed.regenerate_command()}`"
            )
        return fixed

    # ---------------------------------------------------------------------------------------------- binding
    def regenerate_command(self) -> str:
        """The ``run_episode.py episodes`` command that writes this file again from its dataset."""
        return regenerate_command(
            self.dataset, self.protocol, self.split, self.n_way, self.n_shot, self.n_query, seed=self.seed,
            count=self.count, within_alphabet=self.within_alphabet, path=self.source,
        )  # fmt: skip

    def check_split(self, split: ClassSplit) -> None:
        """Raise DataError unless ``split`` has this file's dataset, protocol, split and fingerprint."""
        diffs = [
            f"{name}: file has {want!r}, loaded split has {got!r}"
            for name, want, got in (
                ("dataset", self.dataset, split.dataset),
                ("protocol", self.protocol, split.protocol),
                ("split", self.split, split.split),
                ("fingerprint", self.fingerprint, split.fingerprint),
            )
            if want != got
        ]
        if diffs:
            where = f"fixed episodes file {self.source!r}" if self.source else "these fixed episodes"
            raise DataError(
                f"{where} was made for another split ({'; '.join(diffs)}); load the split the file names, "
                f"or regenerate the file with `{self.regenerate_command()}`"
            )

    def bind(self, split: ClassSplit) -> BoundEpisodes:
        """Resolve names to indices of ``split``: a lazily built sequence of :class:`~episodes.episode.Episode`.

        Raises:
            DataError: the split differs in dataset, protocol, split or fingerprint (the message names every
                differing field, expected vs got, and the command that regenerates the file), or a class or
                image id of the file is not in the split.
        """
        self.check_split(split)
        class_index = {name: c for c, name in enumerate(split.class_names)}
        id_maps: dict[int, dict[str, int]] = {}

        def ids_to_store(c: int, ids: Sequence[str], ep: FixedEpisode) -> list[int]:
            if c not in id_maps:
                members = split.class_images[c]
                id_maps[c] = {split.image_ids[j]: int(j) for j in members}
                if len(id_maps[c]) != len(members):
                    raise DataError(
                        f"class {split.class_names[c]!r} of {split_label(split)} has duplicate image ids, so "
                        "fixed episode files cannot name its images; fix the dataset loader"
                    )
            try:
                return [id_maps[c][i] for i in ids]
            except KeyError as exc:
                raise DataError(
                    f"episode {ep.index}: image id {exc.args[0]!r} is not in class {split.class_names[c]!r} of "
                    f"{split_label(split)}; regenerate the file with `{self.regenerate_command()}`"
                ) from None

        bound = []
        for ep in self.episodes:
            missing = [name for name in ep.classes if name not in class_index]
            if missing:
                raise DataError(
                    f"episode {ep.index}: class {missing[0]!r} is not in {split_label(split)}; regenerate the "
                    f"file with `{self.regenerate_command()}`"
                )
            classes = [class_index[name] for name in ep.classes]
            bound.append(
                EpisodeIndices(
                    index=ep.index,
                    classes=np.array(classes, dtype=np.int64),
                    support=np.array([ids_to_store(c, s, ep) for c, s in zip(classes, ep.support, strict=True)]),
                    query=np.array([ids_to_store(c, q, ep) for c, q in zip(classes, ep.query, strict=True)]),
                    rotation=np.array(ep.rotation, dtype=np.int64),
                )
            )
        return BoundEpisodes(self, split, bound)


class BoundEpisodes(Sequence):
    """Fixed episodes bound to a split: ``bound[j]`` builds the tensors of the ``j``-th episode on access.

    A map-style dataset (``DataLoader(bound, batch_size=None)`` works). Episodes are built lazily because a
    full set can be large (600 miniImageNet 5-way 5-shot 15-query episodes are 4 GB of float32).
    """

    def __init__(self, fixed: FixedEpisodes, split: ClassSplit, indices: list[EpisodeIndices]) -> None:
        self.fixed = fixed
        self.split = split
        self._indices = indices
        self._builder = EpisodeBuilder(split)

    def indices(self, j: int) -> EpisodeIndices:
        """The store indices of the ``j``-th episode of the file (no tensors)."""
        return self._indices[j]

    def __getitem__(self, j: int) -> Episode:  # type: ignore[override]
        if not isinstance(j, (int, np.integer)) or isinstance(j, bool):
            raise TypeError(f"episode position must be an int, got {type(j).__name__} {j!r}")
        return self._builder(self._indices[j])

    def __len__(self) -> int:
        return len(self._indices)

    def __repr__(self) -> str:
        f = self.fixed
        sizes = f"{f.n_way}-way {f.n_shot}-shot {f.n_query}-query"
        return f"BoundEpisodes({split_label(self.split)}, {sizes}, count={len(self)})"


def make_fixed_episodes(
    split: ClassSplit,
    n_way: int,
    n_shot: int,
    n_query: int,
    seed: int = 0,
    count: int = 600,
    *,
    within_alphabet: bool = False,
    rotation_augment: bool | None = None,
) -> FixedEpisodes:
    """Episodes ``0..count-1`` of ``EpisodeSampler(split, n_way, n_shot, n_query, seed=seed, ...)``, by name.

    Binding the result to the same split gives exactly the sampler's episodes (bit for bit).

    Raises:
        ConfigError: ``count`` is not positive, or a size check of the sampler fails.
    """
    if isinstance(count, bool) or not isinstance(count, (int, np.integer)):
        raise TypeError(f"count must be an int, got {type(count).__name__} {count!r}")
    if count < 1:
        raise ConfigError(f"count must be a positive int, got {count}; use count >= 1")
    sampler = EpisodeSampler(
        split, n_way, n_shot, n_query, seed=seed, within_alphabet=within_alphabet,
        rotation_augment=rotation_augment, length=int(count),
    )  # fmt: skip
    names, ids = split.class_names, split.image_ids
    episodes = []
    for i in range(count):
        ind = sampler.indices(i)
        episodes.append(
            FixedEpisode(
                index=ind.index,
                classes=tuple(names[c] for c in ind.classes.tolist()),
                rotation=tuple(ind.rotation.tolist()),
                support=tuple(tuple(ids[j] for j in row) for row in ind.support.tolist()),
                query=tuple(tuple(ids[j] for j in row) for row in ind.query.tolist()),
            )
        )
    return FixedEpisodes(
        split.dataset, split.protocol, split.split, split.fingerprint, _canonical(dict(split.meta)),
        sampler.n_way, sampler.n_shot, sampler.n_query, sampler.seed, sampler.within_alphabet,
        sampler.rotation_augment, tuple(episodes),
    )  # fmt: skip


# ------------------------------------------------------------------------------------------------ validation
def _from_dict(data: Any, source: str) -> FixedEpisodes:
    def bad(what: str) -> DataError:
        return DataError(
            f"fixed episodes file {source!r}: {what}; the file is corrupt or was edited by hand: regenerate it "
            "with `run_episode.py episodes ... --save FILE`"
        )

    if not isinstance(data, dict):
        raise bad(f"expected a JSON object at the top level, got {type(data).__name__}")
    if data.get("format") != FORMAT:
        raise bad(f'expected "format": {FORMAT!r}, got {data.get("format")!r}')
    version = data.get("format_version")
    if version == 1:
        raise DataError(
            f"fixed episodes file {source!r} has format_version 1: it predates integrity checks (no sha256), so "
            "fewshot cannot tell whether it was edited; regenerate it (same content, same content hash) with "
            "`run_episode.py episodes ... --save FILE --force`, or delete it if it is under _episode_sets/ (it is "
            "regenerated on next use)"
        )
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise DataError(
            f"fixed episodes file {source!r} has format_version {version!r}, but this fewshot reads version "
            f"{FORMAT_VERSION}; upgrade fewshot or regenerate the file with `run_episode.py episodes ... --save`"
        )

    def get(key: str, kind: type | tuple[type, ...]) -> Any:
        if key not in data:
            raise bad(f"missing field {key!r}")
        value = data[key]
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise bad(f"field {key!r} should be {getattr(kind, '__name__', kind)}, got {value!r}")
        return value

    header = {k: get(k, str) for k in ("dataset", "protocol", "split", "fingerprint")}
    sizes = {k: get(k, int) for k in ("n_way", "n_shot", "n_query", "seed", "count")}
    for k in ("n_way", "n_shot", "n_query", "count"):
        if sizes[k] < 1:
            raise bad(f"field {k!r} should be a positive int, got {sizes[k]}")
    meta = get("meta", dict)
    flags = {k: get(k, bool) for k in ("within_alphabet", "rotation_augment")}
    raw_episodes = get("episodes", list)
    if len(raw_episodes) != sizes["count"]:
        raise bad(f'"count" says {sizes["count"]} episodes but the file holds {len(raw_episodes)}')
    n_way, n_shot, n_query = sizes["n_way"], sizes["n_shot"], sizes["n_query"]
    episodes = []
    for pos, ep in enumerate(raw_episodes):
        where = f"episode at position {pos}"
        if not isinstance(ep, dict) or set(ep) != {"index", "classes", "rotation", "support", "query"}:
            raise bad(f"{where}: expected an object with keys index, classes, rotation, support, query")
        index, classes, rotation = ep["index"], ep["classes"], ep["rotation"]
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            raise bad(f"{where}: index should be a non-negative int, got {index!r}")
        if not _is_str_list(classes, n_way) or sorted(set(classes)) != classes:
            raise bad(f"{where}: classes should be {n_way} distinct names in sorted order, got {classes!r}")
        if not isinstance(rotation, list) or len(rotation) != n_way or not all(_is_quarter(r) for r in rotation):
            raise bad(f"{where}: rotation should be {n_way} quarter turns in 0..3, got {rotation!r}")
        for name, rows, k in (("support", ep["support"], n_shot), ("query", ep["query"], n_query)):
            if not isinstance(rows, list) or len(rows) != n_way or not all(_is_str_list(r, k) for r in rows):
                raise bad(f"{where}: {name} should be {n_way} lists of {k} image ids")
        for c in range(n_way):
            if len(set(ep["support"][c]) | set(ep["query"][c])) != n_shot + n_query:
                raise bad(f"{where}: class {classes[c]!r} repeats an image within or across support and query")
        episodes.append(
            FixedEpisode(
                index=index,
                classes=tuple(classes),
                rotation=tuple(int(r) for r in rotation),
                support=tuple(tuple(s) for s in ep["support"]),
                query=tuple(tuple(q) for q in ep["query"]),
            )
        )
    return FixedEpisodes(
        **header, meta=meta, n_way=n_way, n_shot=n_shot, n_query=n_query, seed=sizes["seed"], **flags,
        episodes=tuple(episodes), source=source,
    )  # fmt: skip


def _is_str_list(value: Any, length: int) -> bool:
    return isinstance(value, list) and len(value) == length and all(isinstance(v, str) for v in value)


def _is_quarter(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 3
