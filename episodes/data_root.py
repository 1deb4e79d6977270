"""Where datasets and decoded caches live on disk.

The data root is the folder that holds one sub-folder per dataset (``<root>/omniglot/``,
``<root>/miniimagenet/``). It is chosen by the first rule that applies:

1. the ``--data-root DIR`` flag;
2. the ``FEWSHOT_DATA`` environment variable;
3. ``./data`` (relative to the working directory) if it holds the dataset, i.e. ``./data/<dataset>/`` exists
   and is not empty;
4. ``<repo>/../shared/data`` if it exists: the read-only copy these machines provide, so that the README
   commands and CI find Omniglot without anyone typing a path (``<repo>`` is the folder holding the
   ``episodes`` package);
5. ``./data`` otherwise (the loaders then say what is missing and how to get it).

The data root may be read-only. Decoded, preprocessed arrays are therefore cached elsewhere: in
``$FEWSHOT_CACHE`` if set, else ``~/.cache/fewshot``.

Downloads (``run_episode.py data fetch``) never write into the machine-provided copy: their target is the flag,
else ``FEWSHOT_DATA``, else ``./data`` (:func:`resolve_fetch_root`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fewshot.errors import DataError

__all__ = [
    "DATA_ENV",
    "CACHE_ENV",
    "DataRoot",
    "explain_data_root",
    "resolve_data_root",
    "resolve_fetch_root",
    "resolve_cache_dir",
    "repo_root",
    "shared_data_root",
]

DATA_ENV = "FEWSHOT_DATA"
CACHE_ENV = "FEWSHOT_CACHE"


@dataclass(frozen=True)
class DataRoot:
    """A resolved data root and the rule that chose it.

    Attributes:
        path: absolute path of the data root.
        rule: short name of the rule: ``"flag"``, ``"env"``, ``"cwd"``, ``"shared"`` or ``"default"``.
        reason: one readable sentence saying why this root was chosen (shown by ``data info``).
    """

    path: Path
    rule: str
    reason: str


def repo_root() -> Path:
    """The folder holding the ``episodes`` package (the repository checkout when run from source)."""
    return Path(__file__).resolve().parent.parent


def shared_data_root() -> Path:
    """``<repo>/../shared/data``: where these machines keep a read-only copy of the datasets."""
    return repo_root().parent / "shared" / "data"


def _holds(root: Path, dataset: str | None) -> bool:
    """Whether ``root`` holds ``dataset`` (a non-empty ``root/dataset`` folder), or any dataset if None."""
    if not root.is_dir():
        return False
    if dataset is not None:
        folder = root / dataset
        return folder.is_dir() and any(folder.iterdir())
    return any(p.is_dir() and any(p.iterdir()) for p in root.iterdir())


def _given(path: str | Path, source: str) -> Path:
    root = Path(path).expanduser().absolute()
    if not root.is_dir():
        raise DataError(
            f"the data root {str(root)!r} given by {source} is not an existing folder; "
            "create it (run_episode.py data fetch omniglot --data-root DIR downloads Omniglot into it) "
            "or point it at a folder holding <dataset>/ sub-folders"
        )
    return root


def explain_data_root(flag: str | Path | None = None, dataset: str | None = None) -> DataRoot:
    """Resolve the data root and say which rule chose it (see the module docstring for the rules).

    Args:
        flag: the ``--data-root`` value, or None when the flag was not given.
        dataset: registry name of the dataset about to be read (``"omniglot"``); used by the ``./data``
            rule, which only applies when ``./data/<dataset>/`` is non-empty. None: any dataset.

    Raises:
        DataError: the flag or ``FEWSHOT_DATA`` names a path that is not an existing folder.
    """
    if flag is not None and str(flag) != "":
        return DataRoot(_given(flag, "--data-root"), "flag", "given by --data-root")
    env = os.environ.get(DATA_ENV, "")
    if env:
        return DataRoot(_given(env, f"${DATA_ENV}"), "env", f"given by ${DATA_ENV}")
    cwd_data = Path.cwd() / "data"
    what = f"data/{dataset}/" if dataset else "a dataset"
    if _holds(cwd_data, dataset):
        return DataRoot(cwd_data, "cwd", f"./data holds {what}")
    shared = shared_data_root()
    if shared.is_dir():
        return DataRoot(
            shared.resolve(), "shared", f"no flag, no ${DATA_ENV}, ./data lacks {what}: the machine-provided copy"
        )
    return DataRoot(cwd_data, "default", f"no flag, no ${DATA_ENV}, no machine-provided copy: ./data")


def resolve_data_root(flag: str | Path | None = None, dataset: str | None = None) -> Path:
    """The data root to read ``dataset`` from (flag, ``$FEWSHOT_DATA``, ``./data``, ``../shared/data``).

    Example:
        >>> root = resolve_data_root(None, "omniglot")  # doctest: +SKIP
        >>> (root / "omniglot").is_dir()  # doctest: +SKIP
        True
    """
    return explain_data_root(flag, dataset).path


def resolve_fetch_root(flag: str | Path | None = None) -> DataRoot:
    """Where downloads go: the flag, else ``$FEWSHOT_DATA``, else ``./data`` (created if missing).

    Unlike :func:`resolve_data_root` this never picks the machine-provided copy, which is read-only.
    """
    if flag is not None and str(flag) != "":
        return DataRoot(Path(flag).expanduser().absolute(), "flag", "given by --data-root")
    env = os.environ.get(DATA_ENV, "")
    if env:
        return DataRoot(Path(env).expanduser().absolute(), "env", f"given by ${DATA_ENV}")
    return DataRoot(Path.cwd() / "data", "default", f"no flag, no ${DATA_ENV}: ./data")


def resolve_cache_dir() -> Path:
    """Folder for decoded-array caches: ``$FEWSHOT_CACHE``, else ``~/.cache/fewshot`` (not created here)."""
    env = os.environ.get(CACHE_ENV, "")
    if env:
        return Path(env).expanduser().absolute()
    return Path.home() / ".cache" / "fewshot"
