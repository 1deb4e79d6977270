"""Checkpoint files: atomic writes, safe loads, and the random-number-generator states they carry.

A checkpoint is a plain dict saved with :func:`torch.save`. It is written to a temporary file in the target
folder, flushed to disk, then moved over the target with ``os.replace``, so a reader (or a killed run) never
sees a half-written file. Loading uses ``torch.load(weights_only=True)``: a checkpoint cannot execute code, so
everything in it is tensors, numbers, strings, lists, tuples and dicts (the numpy RNG state is stored as a
tensor for that reason).
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from episodes.cache import atomic_write_bytes
from fewshot.errors import DataError

__all__ = ["CHECKPOINT_FORMAT", "save_checkpoint", "load_checkpoint", "get_rng_state", "set_rng_state"]

#: Version of the training checkpoint layout (``last.pt``); bumped when keys change meaning.
CHECKPOINT_FORMAT = 1


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, fsync, ``os.replace``)."""
    path = Path(path)
    atomic_write_bytes(path, lambda fh: torch.save(payload, fh), fsync=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` (tensors only: ``weights_only=True``).

    Raises:
        DataError: the file is missing or is not a readable checkpoint (the message names the file).
    """
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    if not path.is_file():
        raise DataError(f"{where} does not exist; check the run directory (train writes checkpoints/last.pt)")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError for damaged files
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise DataError(
            f"{where} cannot be read ({type(exc).__name__}: {first}); it is damaged or was not written by fewshot "
            "(checkpoints are loaded with weights_only=True and may hold tensors and plain data only)"
        ) from None
    if not isinstance(payload, dict):
        raise DataError(f"{where} holds a {type(payload).__name__}, expected a dict written by fewshot")
    return payload


def get_rng_state() -> dict[str, Any]:
    """The torch, numpy and Python global RNG states, in a form ``torch.load(weights_only=True)`` accepts."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "internal": [int(v) for v in internal], "gauss_next": gauss_next},
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore the global RNG states saved by :func:`get_rng_state`."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["name"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss_next"]))
