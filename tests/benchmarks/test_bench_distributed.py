"""``run_episode.py bench distributed``: the command plumbing (table, CSV with the command, option errors). The
measurement (two spawned gloo ranks) is a benchmark run, not a test; the equality of the distributed meta-step
with one process is tested in tests/training/test_distributed.py."""

from __future__ import annotations

import pandas as pd
import pytest

from fewshot.cli.bench import load_benchmark
from fewshot.cli.main import main

bench = load_benchmark("bench_distributed")


def test_prints_and_writes_csv(tmp_path, monkeypatch, capsys) -> None:
    row = bench.DistRow("protonet-conv4-batchnorm", 4, 3, 2, 0.6, 0.5, 0.25, 2.0, 1.2, 2.4, 447808, 8264, 16)
    monkeypatch.setattr(bench, "run", lambda **kw: [row])
    out = tmp_path / "bench_distributed.csv"
    assert main(["bench", "distributed", "--steps", "1", "--write", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# torch ") and "protonet-conv4-batchnorm" in printed and "2.00" in printed
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# command: python ") and "bench distributed --steps 1 --write" in lines[0]
    frame = pd.read_csv(out, comment="#")
    assert frame["speedup_2x1"].iloc[0] == pytest.approx(2.0) and frame["grad_bytes"].iloc[0] == 447808


def test_unknown_configuration_and_bad_counts_are_refused(capsys) -> None:
    assert main(["bench", "distributed", "--configs", "protonet-conv5"]) == 2
    assert "unknown configuration(s) ['protonet-conv5']" in capsys.readouterr().err
    assert main(["bench", "distributed", "--steps", "0"]) == 2
    assert "--steps and --rounds must be >= 1, got 0 and 2" in capsys.readouterr().err
