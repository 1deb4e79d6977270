"""scripts/park_runs.sh: unfinished runs survive the end of a session as committed files under 1 MiB each."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "park_runs.sh"
pytestmark = pytest.mark.skipif(shutil.which("split") is None or shutil.which("sha256sum") is None, reason="coreutils")


def _park(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(root / "scripts" / "park_runs.sh"), *args], capture_output=True, text=True)


@pytest.fixture
def checkout(tmp_path: Path) -> Path:
    """A checkout with the script and one unfinished sweep run whose last.pt is 2.5 MiB."""
    (tmp_path / "scripts").mkdir()
    shutil.copy(SCRIPT, tmp_path / "scripts" / "park_runs.sh")
    run = tmp_path / "runs" / "sweeps" / "grid" / "swbn" / "seed0"
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text("learner: protonet\n")
    (run / "metrics.json").write_text('{"status": "running"}\n')
    (run / "checkpoints" / "last.pt").write_bytes(os.urandom(2_621_440))
    (run / "checkpoints" / "best.pt").write_bytes(os.urandom(1000))
    return tmp_path


def test_a_checkpoint_over_1_mib_is_parked_in_parts_and_restored_bitwise(checkout: Path) -> None:
    run = checkout / "runs" / "sweeps" / "grid" / "swbn" / "seed0"
    original = (run / "checkpoints" / "last.pt").read_bytes()
    saved = _park(checkout, "save")
    assert saved.returncode == 0, saved.stderr
    parked = checkout / "results" / "inflight" / "runs" / "sweeps" / "grid" / "swbn" / "seed0" / "checkpoints"
    parts = sorted(parked.glob("last.pt.part-*"))
    assert [p.name for p in parts] == ["last.pt.part-000", "last.pt.part-001", "last.pt.part-002"]
    assert all(p.stat().st_size <= 960 * 1024 for p in parts)
    assert not (parked / "last.pt").exists() and (parked / "best.pt").stat().st_size == 1000
    assert all(p.stat().st_size < 1024 * 1024 for p in (checkout / "results").rglob("*") if p.is_file())

    shutil.rmtree(checkout / "runs")
    restored = _park(checkout, "restore")
    assert restored.returncode == 0, restored.stderr
    assert (run / "checkpoints" / "last.pt").read_bytes() == original
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]
    assert len(list(parked.glob("last.pt.part-*"))) == 3  # the parked copy stays as committed


def test_a_changed_part_is_refused_and_leaves_no_half_restored_run(checkout: Path) -> None:
    assert _park(checkout, "save").returncode == 0
    parked = checkout / "results" / "inflight" / "runs" / "sweeps" / "grid" / "swbn" / "seed0" / "checkpoints"
    part = parked / "last.pt.part-001"
    data = bytearray(part.read_bytes())
    data[7] ^= 1
    part.write_bytes(bytes(data))
    shutil.rmtree(checkout / "runs")
    restored = _park(checkout, "restore")
    assert restored.returncode != 0
    assert "a part is missing or changed" in restored.stderr and "last.pt" in restored.stderr
    cell = checkout / "runs" / "sweeps" / "grid" / "swbn"
    assert list(cell.iterdir()) == []  # neither seed0 nor its seed0.restoring staging folder is left


def test_a_finished_run_parks_its_best_checkpoint_only(checkout: Path) -> None:
    run = checkout / "runs" / "sweeps" / "grid" / "swbn" / "seed0"
    (run / "metrics.json").write_text('{"status": "finished"}\n')
    assert _park(checkout, "save").returncode == 0
    parked = checkout / "results" / "inflight" / "runs" / "sweeps" / "grid" / "swbn" / "seed0" / "checkpoints"
    assert sorted(p.name for p in parked.iterdir()) == ["best.pt"]


def test_restore_keeps_a_run_folder_that_already_exists(checkout: Path) -> None:
    assert _park(checkout, "save").returncode == 0
    last = checkout / "runs" / "sweeps" / "grid" / "swbn" / "seed0" / "checkpoints" / "last.pt"
    last.write_bytes(b"newer")
    restored = _park(checkout, "restore")
    assert restored.returncode == 0 and "kept runs/sweeps/grid/swbn/seed0" in restored.stdout
    assert last.read_bytes() == b"newer"


def test_save_keeps_parked_runs_that_are_not_in_runs_now(checkout: Path) -> None:
    assert _park(checkout, "save").returncode == 0
    other = checkout / "runs" / "sweeps" / "other_grid" / "bn" / "seed0"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text("learner: protonet\n")
    shutil.rmtree(checkout / "runs" / "sweeps" / "grid")  # a later session that did not restore grid/swbn/seed0
    assert _park(checkout, "save").returncode == 0
    parked = checkout / "results" / "inflight" / "runs" / "sweeps"
    assert (parked / "other_grid" / "bn" / "seed0" / "config.yaml").is_file()
    assert len(list((parked / "grid" / "swbn" / "seed0" / "checkpoints").glob("last.pt.part-*"))) == 3
