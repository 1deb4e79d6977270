"""Checkpoint files: atomic writes, safe loading, RNG state round trip."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from fewshot.errors import DataError
from fewshot.training.checkpoint import get_rng_state, load_checkpoint, save_checkpoint, set_rng_state


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


def test_missing_damaged_and_unsafe_files_raise_data_error(tmp_path):
    with pytest.raises(DataError, match=r"checkpoint '.*nope\.pt' does not exist"):
        load_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match=r"bad\.pt' cannot be read .*damaged"):
        load_checkpoint(tmp_path / "bad.pt")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(DataError, match=r"holds a list, expected a dict"):
        load_checkpoint(tmp_path / "list.pt")


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
