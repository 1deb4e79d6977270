"""Content-addressed fixed episode files under ``<runs root>/_episode_sets/``, shared by every run.

Validation and evaluation episodes are drawn once, deterministically, from ``(dataset, protocol, split,
split fingerprint, n_way, n_shot, n_query, seed, count, within_alphabet)`` with
:func:`episodes.fixed.make_fixed_episodes`, saved under a file name carrying a hash of exactly those fields,
and reused by every later run that asks for the same set. So all runs (BN, SWBN, ...) are validated and tested
on the very same episodes, and the file a result came from can be named in its summary. The split's
fingerprint covers the source images, the preprocessing options and the split file, so a change of data or
options gives a new file instead of a silent mismatch. On every load the file's own SHA-256 is checked
(:meth:`episodes.fixed.FixedEpisodes.load`) and so is the request it answers: a file holding other episodes
under this name (another shot, seed, count, split or data) is refused with its path and the command that
regenerates it. A version-1 file (written before files carried a digest) is kept only if it equals the episodes
regenerated from its request, and is then rewritten as version 2 (same episodes, same content hash).

The runs root is ``$FEWSHOT_RUNS`` if set, else ``./runs``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from episodes.fixed import BoundEpisodes, FixedEpisodes, make_fixed_episodes, regenerate_command
from episodes.split import ClassSplit
from fewshot.config.schema import ExperimentConfig
from fewshot.errors import DataError

__all__ = [
    "RUNS_ENV",
    "EpisodeSet",
    "runs_root",
    "episode_set_key",
    "get_episode_set",
    "val_episode_set",
    "eval_episode_set",
]

RUNS_ENV = "FEWSHOT_RUNS"


def runs_root(root: str | Path | None = None) -> Path:
    """``root`` if given, else ``$FEWSHOT_RUNS``, else ``./runs``."""
    if root is not None:
        return Path(root)
    return Path(os.environ.get(RUNS_ENV) or "runs")


@dataclass(frozen=True)
class EpisodeSet:
    """A fixed episode set, its file and its key.

    Attributes:
        path: the JSON file under ``_episode_sets/``.
        key: the fields the file is addressed by (see :func:`episode_set_key`).
        key_hash: first 16 hex digits of the key's sha256 (in the file name).
        fixed: the loaded :class:`~episodes.fixed.FixedEpisodes`.
        episodes: the episodes bound to the split (built lazily on access).
    """

    path: Path
    key: dict[str, Any]
    key_hash: str
    fixed: FixedEpisodes
    episodes: BoundEpisodes

    @property
    def content_hash(self) -> str:
        """sha256 of the file's episodes (see :meth:`episodes.fixed.FixedEpisodes.content_hash`)."""
        return self.fixed.content_hash()


def episode_set_key(
    split: ClassSplit, n_way: int, n_shot: int, n_query: int, *, seed: int, count: int, within_alphabet: bool = False
) -> dict[str, Any]:
    """The fields a fixed episode set is addressed by."""
    return {
        "dataset": split.dataset,
        "protocol": split.protocol,
        "split": split.split,
        "fingerprint": split.fingerprint,
        "n_way": int(n_way),
        "n_shot": int(n_shot),
        "n_query": int(n_query),
        "seed": int(seed),
        "count": int(count),
        "within_alphabet": bool(within_alphabet),
    }


def get_episode_set(
    split: ClassSplit,
    n_way: int,
    n_shot: int,
    n_query: int,
    *,
    seed: int,
    count: int,
    within_alphabet: bool = False,
    root: str | Path | None = None,
) -> EpisodeSet:
    """Load the fixed episode set for these fields, creating (and saving) it the first time.

    Rotation augmentation is never applied to fixed sets (``rotation_augment=False``): class rotations of the
    split still apply.

    Args:
        split: the split to draw from and bind to.
        n_way, n_shot, n_query: episode sizes.
        seed: sampler seed of the set.
        count: number of episodes.
        within_alphabet: draw each episode's classes from one alphabet.
        root: runs root (default :func:`runs_root`); files go to ``<root>/_episode_sets/``.

    Raises:
        ConfigError: the sizes do not fit the split (from the sampler).
        DataError: an existing file is corrupt, edited, or answers another request than this one.
    """
    key = episode_set_key(split, n_way, n_shot, n_query, seed=seed, count=count, within_alphabet=within_alphabet)
    key_hash = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    where = "-within" if within_alphabet else ""
    shape = f"{n_way}w{n_shot}s{n_query}q{where}"
    name = f"{split.dataset}-{split.protocol}-{split.split}-{shape}-seed{seed}-n{count}-{key_hash}.json"
    path = runs_root(root) / "_episode_sets" / name

    def make() -> FixedEpisodes:
        return make_fixed_episodes(
            split, n_way, n_shot, n_query, seed=seed, count=count, within_alphabet=within_alphabet,
            rotation_augment=False,
        )  # fmt: skip

    if path.is_file() and _format_version(path) == 1:
        _upgrade_v1(path, make(), key)
    if path.is_file():
        fixed = FixedEpisodes.load(path)
        _check_request(fixed, key, path)
    else:
        make().save(path)  # atomic; a concurrent writer of the same content is harmless
        fixed = FixedEpisodes.load(path)
    return EpisodeSet(path=path, key=key, key_hash=key_hash, fixed=fixed, episodes=fixed.bind(split))


def _format_version(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("format_version")
    except (OSError, ValueError, AttributeError):
        return None  # FixedEpisodes.load reports what is wrong with the file


def _upgrade_v1(path: Path, made: FixedEpisodes, key: dict[str, Any]) -> None:
    """Rewrite a version-1 file as version 2 if it holds exactly the episodes regenerated from its request."""
    old = json.loads(path.read_text(encoding="utf-8"))
    new = json.loads(made.to_json())
    if {k: v for k, v in old.items() if k != "format_version"} != {
        k: v for k, v in new.items() if k not in ("format_version", "sha256")
    }:
        diffs = [f"{k}: file has {old.get(k)!r}, expected {v!r}" for k, v in key.items() if old.get(k) != v]
        _refuse(path, key, diffs or ["its episodes differ from those its request gives (edited by hand)"])
    made.save(path, overwrite=True)


def _check_request(fixed: FixedEpisodes, key: dict[str, Any], path: Path) -> None:
    """Raise DataError unless the file answers exactly the request ``key`` (and has no rotation augmentation)."""
    found = {**{k: getattr(fixed, k) for k in key if k != "count"}, "count": fixed.count}
    diffs = [f"{k}: file has {found[k]!r}, expected {v!r}" for k, v in key.items() if found[k] != v]
    if fixed.rotation_augment:
        diffs.append("rotation_augment: file has True, expected False")
    if diffs:
        _refuse(path, key, diffs)


def _refuse(path: Path, key: dict[str, Any], diffs: list[str]) -> None:
    command = regenerate_command(
        key["dataset"], key["protocol"], key["split"], key["n_way"], key["n_shot"], key["n_query"],
        seed=key["seed"], count=key["count"], within_alphabet=key["within_alphabet"], path=path,
    )  # fmt: skip
    raise DataError(
        f"fixed episodes file {str(path)!r} holds other episodes than its name says ({'; '.join(diffs)}); it "
        f"was replaced or edited, so it is not used. Delete it (the next train/eval regenerates it from the "
        f"dataset) or regenerate it with `{command}`"
    )


def val_episode_set(cfg: ExperimentConfig, split: ClassSplit, root: str | Path | None = None) -> EpisodeSet:
    """The validation set of ``cfg``: eval way/shot/query, ``train.val_episodes`` episodes, seed ``eval.seed``."""
    e = cfg.eval
    return get_episode_set(
        split, e.n_way, e.n_shot, e.n_query, seed=e.seed, count=cfg.train.val_episodes,
        within_alphabet=e.within_alphabet, root=root,
    )  # fmt: skip


def eval_episode_set(cfg: ExperimentConfig, split: ClassSplit, root: str | Path | None = None) -> EpisodeSet:
    """The evaluation (test) set of ``cfg``: eval way/shot/query, ``eval.episodes`` episodes, seed ``eval.seed``."""
    e = cfg.eval
    return get_episode_set(
        split, e.n_way, e.n_shot, e.n_query, seed=e.seed, count=e.episodes, within_alphabet=e.within_alphabet,
        root=root,
    )  # fmt: skip
