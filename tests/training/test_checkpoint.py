"""Checkpoint files: atomic writes, safe loading, RNG state round trip."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fewshot.errors import DataError
from fewshot.training.checkpoint import (
    adopt_checkpoint,
    get_rng_state,
    load_checkpoint,
    save_checkpoint,
    set_rng_state,
)


class _Unpicklable:
    def __reduce__(self):
        raise RuntimeError("this object refuses to be pickled")


def test_round_trip_and_atomic_replacement(tmp_path):
    path = tmp_path / "ck" / "last.pt"
    save_checkpoint({"w": torch.arange(3.0), "n": 1}, path)
    save_checkpoint({"w": torch.arange(4.0), "n": 2}, path)
    loaded = load_checkpoint(path)
    assert loaded["n"] == 2 and torch.equal(loaded["w"], torch.arange(4.0))
    assert [p.name for p in path.parent.iterdir()] == ["last.pt"]


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"n": 1}, path)
    with pytest.raises(RuntimeError, match="refuses to be pickled"):
        save_checkpoint({"n": 2, "bad": _Unpicklable()}, path)  # fails half-way through the write
    assert load_checkpoint(path)["n"] == 1
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_missing_foreign_and_unsafe_files_raise_data_error(tmp_path):
    with pytest.raises(DataError, match=r"checkpoint '.*nope\.pt' does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"bad\.pt' has no fewshot checkpoint header: it predates checkpoint"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save({"model": {}}, tmp_path / "plain.pt")  # a plain torch file (what fewshot wrote before format 2)
    with pytest.raises(DataError, match=r"plain\.pt' has no fewshot checkpoint header.*retrain the run.*adopt"):
        load_checkpoint(tmp_path / "plain.pt")
    save_checkpoint([1, 2], tmp_path / "list.pt")
    with pytest.raises(DataError, match=r"holds a list, expected a dict"):
        load_checkpoint(tmp_path / "list.pt")


@pytest.mark.parametrize("where", ["header", "payload start", "payload middle", "payload end"])
def test_a_flipped_byte_anywhere_is_refused(tmp_path, where):
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.randn(64, 64), "n": 1}, path)
    raw = bytearray(path.read_bytes())
    payload_start = raw.index(b"\n") + 1
    pos = {
        "header": payload_start - 5,  # inside the hex digest
        "payload start": payload_start,
        "payload middle": (payload_start + len(raw)) // 2,
        "payload end": len(raw) - 1,
    }[where]
    raw[pos] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"last\.pt' (fails its integrity check|has a damaged header)"):
        load_checkpoint(path)


def test_a_truncated_checkpoint_is_refused(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint({"w": torch.randn(100)}, path)
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"fails its integrity check .* damaged or edited after it was written"):
        load_checkpoint(path)


def test_a_trusted_header_less_checkpoint_can_be_adopted_once(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "old.pt"
    torch.save({"w": torch.arange(5.0), "format": 1}, path)  # what fewshot wrote before checkpoints had a header
    result = subprocess.run(
        [sys.executable, "-m", "fewshot.training.checkpoint", "adopt", str(path)],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[2],
    )  # fmt: skip
    assert result.returncode == 0 and result.stdout == f"adopted: {path}\n", result.stderr
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["w"], torch.arange(5.0)) and loaded["format"] == 1
    digest = path.read_bytes()
    assert adopt_checkpoint(path) is False and path.read_bytes() == digest  # already verified: nothing written
    raw = bytearray(digest)
    raw[-3] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError, match="fails its integrity check"):  # a damaged verified file is not re-adopted
        adopt_checkpoint(path)
    (tmp_path / "junk.pt").write_bytes(b"junk")
    with pytest.raises(DataError, match="cannot be read"):
        adopt_checkpoint(tmp_path / "junk.pt")


def test_rng_states_round_trip_through_a_weights_only_checkpoint(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn()  # leave a cached gaussian in numpy's legacy state
    save_checkpoint({"rng": get_rng_state()}, tmp_path / "rng.pt")
    expected = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    torch.manual_seed(99), np.random.seed(99), random.seed(99)
    set_rng_state(load_checkpoint(tmp_path / "rng.pt")["rng"])
    got = (torch.rand(3), np.random.rand(3), np.random.randn(), random.random())
    assert torch.equal(got[0], expected[0]) and np.array_equal(got[1], expected[1])
    assert got[2:] == expected[2:]
