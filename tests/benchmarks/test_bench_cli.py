"""``run_episode.py bench norms|train``: the command plumbing after the measurement (environment line, table,
claims, CSV with the command, refusal to overwrite). The measurement is replaced by canned rows; the timing
itself is a benchmark run, not a test (results/)."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from fewshot.cli.bench import load_benchmark
from fewshot.cli.main import main

norms_bench = load_benchmark("bench_norms")
train_bench = load_benchmark("bench_train")


def _norm_rows() -> list:
    def row(label, layer, ms, section="step", group=""):
        return norms_bench.Row(section, "omniglot", label, layer, group, "60w1s5q", ms, ms)

    rows = [row("torch_bn", "torch_bn", 100.0), row("batchnorm", "batchnorm", 125.0),
            row("swbn g16", "swbn", 150.0, group=16), row("iternorm g16", "iternorm", 250.0, group=16),
            row("dbn g16", "dbn", 260.0, group=16)]  # fmt: skip
    norms_bench._add_ratios(rows)
    return rows


def test_bench_norms_prints_environment_table_and_writes_csv(tmp_path, monkeypatch, capsys) -> None:
    monkeypatch.setattr(norms_bench, "run", lambda **kw: _norm_rows())
    out = tmp_path / "bench_norms.csv"
    assert main(["bench", "norms", "--write", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("# torch ") and "swbn g16" in printed
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# command: python ") and "bench norms --write --out" in lines[0]
    frame = pd.read_csv(out, comment="#")
    swbn = frame[frame["label"] == "swbn g16"].iloc[0]
    assert swbn["ratio_to_batchnorm"] == pytest.approx(150 / 125) and swbn["ratio_to_torch_bn"] == pytest.approx(1.5)
    assert main(["bench", "norms", "--write", "--out", str(out)]) == 2  # refuses before measuring
    assert "already exists" in capsys.readouterr().err


def test_bench_norms_json_has_environment_rows_and_claims(monkeypatch, capsys) -> None:
    monkeypatch.setattr(norms_bench, "run", lambda **kw: _norm_rows())
    assert main(["bench", "norms", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"environment", "rows", "claims"} and data["environment"]["torch"]
    assert [r["label"] for r in data["rows"]][:2] == ["torch_bn", "batchnorm"]


def test_bench_train_prints_and_writes_csv(tmp_path, monkeypatch, capsys) -> None:
    row = train_bench.Row(setting="protonet conv4 batchnorm 60w1s5q", learner="protonet", episodes=300,
                          meta_batch=1, step_seconds=120.0, overhead_seconds=0.5, episodes_per_second=300 / 120.5,
                          steps_per_second=300 / 120.5, overhead_fraction=0.5 / 120.5)  # fmt: skip
    monkeypatch.setattr(train_bench, "run", lambda **kw: [row])
    out = tmp_path / "bench_train.csv"
    argv = ["bench", "train", "--sections", "trainer", "--protonet-episodes", "300", "--write", "--out", str(out)]
    assert main(argv) == 0
    assert capsys.readouterr().out.startswith("# torch ")
    frame = pd.read_csv(out, comment="#")
    assert frame["episodes"].tolist() == [300] and frame["overhead_fraction"].iloc[0] == pytest.approx(
        0.5 / 120.5, abs=1e-4
    )


def test_bench_eval_measures_each_config_of_the_list_and_writes_one_row_each(tmp_path, monkeypatch, capsys) -> None:
    eval_bench = load_benchmark("bench_eval")
    seen = []

    def fake_run(**kw):
        seen.append(kw["config"])
        return eval_bench.EvalRow(kw["config"], kw["episodes"], "running", 2.0 * len(seen), 1.6, 1.25 * len(seen))

    monkeypatch.setattr(eval_bench, "run", fake_run)
    out = tmp_path / "bench_eval.csv"
    argv = ["bench", "eval", "--config", "a.yaml, b.yaml", "--episodes", "7", "--write", "--out", str(out)]
    assert main(argv) == 0
    assert seen == ["a.yaml", "b.yaml"]
    printed = capsys.readouterr().out
    assert "a.yaml: 7 episodes, policy running" in printed and "evaluate / bare 2.500" in printed
    frame = pd.read_csv(out, comment="#")
    assert frame["config"].tolist() == ["a.yaml", "b.yaml"] and frame["ratio"].tolist() == [1.25, 2.5]
    assert out.read_text().splitlines()[0].endswith("--write --out " + str(out))
    assert main(argv) == 2 and "already exists" in capsys.readouterr().err  # refused before measuring
    assert main(["bench", "eval", "--config", " , "]) == 2
    assert "names no experiment file" in capsys.readouterr().err
