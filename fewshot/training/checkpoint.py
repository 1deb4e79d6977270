"""Checkpoint files: verified, atomic writes and loads, and the random-number-generator states they carry.

A checkpoint holds a plain dict (tensors, numbers, strings, lists, tuples, dicts) serialized with
:func:`torch.save`, behind a one-line header that carries the SHA-256 of those bytes, computed at save time::

    fewshot-checkpoint {"sha256": "<64 hex digits>", "size": <payload bytes>}\n<payload bytes>

:func:`load_checkpoint` recomputes the digest before unpickling, so a checkpoint with a single flipped byte
anywhere (header or payload) is refused instead of scoring near chance as a normal result. A file written
before this header existed (a plain ``torch.save`` file) is refused too; one that its owner trusts can be given
the header once with :func:`adopt_checkpoint` (``python -m fewshot.training.checkpoint adopt FILE ...``). The payload is
loaded with ``torch.load(weights_only=True)``: a checkpoint cannot execute code (the numpy RNG state is stored as
a tensor for that reason).

Writes go to a temporary file in the target folder, are flushed to disk (``fsync``) and moved over the target
with ``os.replace``, so a reader, a killed run or a full disk never leaves a half-written ``last.pt``: the
previous checkpoint stays until the new one is complete.
"""

from __future__ import annotations

import hashlib
import io
import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from episodes.cache import atomic_write_bytes
from fewshot.errors import DataError

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_MAGIC",
    "save_checkpoint",
    "load_checkpoint",
    "adopt_checkpoint",
    "get_rng_state",
    "set_rng_state",
]

#: Version of the training checkpoint layout (the payload's keys); bumped when keys change meaning.
CHECKPOINT_FORMAT = 1
#: First bytes of every checkpoint written by :func:`save_checkpoint`.
CHECKPOINT_MAGIC = b"fewshot-checkpoint "
_MAX_HEADER = 4096


def save_checkpoint(payload: dict[str, Any], path: str | Path) -> Path:
    """Write ``payload`` behind its SHA-256 header to ``path`` atomically (temp file, fsync, ``os.replace``).

    Raises:
        OSError: the folder cannot be written (disk full, read-only, quota); ``path`` is then unchanged.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    header = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    head = CHECKPOINT_MAGIC + json.dumps(header, sort_keys=True).encode("ascii") + b"\n"

    def write(fh: Any) -> None:
        fh.write(head)
        fh.write(data)

    atomic_write_bytes(path, write, fsync=True)
    return path


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, after checking its SHA-256.

    Raises:
        DataError: the file is missing, has no fewshot header (written before checkpoints were verified, or by
            another program), its bytes differ from those hashed at save time (damaged or edited), or it is not
            a dict of tensors and plain data. The message names the file and what to do.
    """
    path = Path(path)
    where = f"checkpoint {str(path)!r}"
    damaged = (
        "it was damaged or edited after it was written, so fewshot will not use it; restore the file from a copy, "
        "or retrain the run (a run directory's other files are intact)"
    )
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{where} does not exist; check the run directory (train writes checkpoints/last.pt)") from None
    except OSError as exc:
        raise DataError(f"cannot read {where}: {exc.strerror or exc}") from None
    if not raw.startswith(CHECKPOINT_MAGIC):
        raise DataError(
            f"{where} has no fewshot checkpoint header: it predates checkpoint verification or was not written by "
            "fewshot, so its integrity cannot be checked; retrain the run, or, if you trust the file (a run trained "
            f"before fewshot verified checkpoints), adopt it once with `python -m fewshot.training.checkpoint adopt "
            f"{path}`"
        )
    end = raw.find(b"\n", 0, _MAX_HEADER)
    try:
        header = json.loads(raw[len(CHECKPOINT_MAGIC) : end].decode("ascii")) if end > 0 else None
    except (UnicodeDecodeError, json.JSONDecodeError):
        header = None
    if not isinstance(header, dict) or not isinstance(header.get("sha256"), str):
        raise DataError(f"{where} has a damaged header; {damaged}")
    data = raw[end + 1 :]
    digest = hashlib.sha256(data).hexdigest()
    if header.get("size") != len(data) or digest != header["sha256"]:
        raise DataError(
            f"{where} fails its integrity check (SHA-256 of its {len(data)} payload bytes is {digest[:16]}..., "
            f"saved as {header['sha256'][:16]}... for {header.get('size')} bytes); {damaged}"
        )
    return _unpickle(data, where)


def _unpickle(data: bytes, where: str) -> dict[str, Any]:
    try:
        payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises RuntimeError/UnpicklingError/EOFError for unexpected content
        first = (str(exc).strip().splitlines() or [""])[0][:160]
        raise DataError(
            f"{where} cannot be read ({type(exc).__name__}: {first}); it was not written by fewshot "
            "(checkpoints are loaded with weights_only=True and may hold tensors and plain data only)"
        ) from None
    if not isinstance(payload, dict):
        raise DataError(f"{where} holds a {type(payload).__name__}, expected a dict written by fewshot")
    return payload


def adopt_checkpoint(path: str | Path) -> bool:
    """Give a trusted header-less checkpoint (written before verification existed) its SHA-256 header, in place.

    The payload is read with ``weights_only=True`` and written back unchanged behind the header (atomically).
    Only adopt a file you trust: from then on it is verified like any other checkpoint.

    Returns:
        ``True`` if the file was adopted, ``False`` if it already had a valid header (nothing written).

    Raises:
        DataError: the file is missing, unreadable, damaged (header present but not matching), or not a dict.
    """
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read checkpoint {str(path)!r}: {exc.strerror or exc}") from None
    if raw.startswith(CHECKPOINT_MAGIC):
        load_checkpoint(path)  # already adopted: check it, write nothing
        return False
    save_checkpoint(_unpickle(raw, f"checkpoint {str(path)!r}"), path)
    return True


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


if __name__ == "__main__":  # python -m fewshot.training.checkpoint adopt FILE [FILE ...]
    import sys

    if len(sys.argv) < 3 or sys.argv[1] != "adopt":
        sys.exit("usage: python -m fewshot.training.checkpoint adopt FILE [FILE ...]")
    try:
        for name in sys.argv[2:]:
            print(f"{'adopted' if adopt_checkpoint(name) else 'already verified'}: {name}")
    except DataError as exc:
        sys.exit(f"error: {exc}")
