"""benchmarks/bench_episodes.py: its CSV layout, and that --write never replaces a saved result silently."""

from __future__ import annotations

import pandas as pd
import pytest

from benchmarks import bench_episodes


def test_write_refuses_an_existing_file_without_force(tmp_path, capsys) -> None:
    saved = tmp_path / "bench.csv"
    saved.write_text("# command: earlier\nkind\nx\n")
    with pytest.raises(SystemExit) as exc:
        bench_episodes.main(["--write", "--out", str(saved)])
    assert exc.value.code == 2 and "already exists; pass --force" in capsys.readouterr().err
    assert saved.read_text() == "# command: earlier\nkind\nx\n"


def test_csv_holds_command_environment_and_rows(tmp_path) -> None:
    rows = [
        {"kind": "episodes", "config": "5w1s15q", "wall": 3183.554, "cpu": 6495.99, "unit": "episodes/s", "data": "d"},
        {"kind": "load split", "config": "cached", "wall": 0.0749531, "cpu": 0.05, "unit": "s", "data": "d"},
    ]
    text = bench_episodes.to_csv(
        rows, "python benchmarks/bench_episodes.py --write", {"torch": "2.13.0", "threads": "1"}
    )
    lines = text.splitlines()
    assert lines[0] == "# command: python benchmarks/bench_episodes.py --write"
    assert lines[1] == "# torch 2.13.0, threads 1"
    path = tmp_path / "b.csv"
    path.write_text(text)
    frame = pd.read_csv(path, comment="#")
    assert list(frame.columns) == ["kind", "config", "wall", "cpu", "unit", "data"]
    assert frame["wall"].tolist() == [3183.55, 0.0749531]  # 6 significant digits
