"""scripts/check_results_stats.py: the committed compare/accuracy CSVs are reproduced from their per-episode files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def check(load_script):
    return load_script("check_results_stats")


@pytest.mark.slow
def test_committed_results_are_reproduced(check, capsys):
    assert check.main([]) == 0, capsys.readouterr().out


def test_a_changed_printed_value_is_reported(check, tmp_path, capsys):
    results = tmp_path / "results"
    for archive in ("runs", "previous"):  # the compared runs were moved to previous/ when retrained
        shutil.copytree(ROOT / "results" / archive, results / archive)
    lines = (ROOT / "results" / "compare_maml_omniglot_v02.csv").read_text().splitlines(keepends=True)
    first_row = next(i for i, line in enumerate(lines) if line.startswith("omniglot,"))
    lines[first_row] = lines[first_row].replace(",9.36117e-05,0.00019999,", ",9.36117e-05,0.0002,")
    (results / "compare_maml_omniglot_v02.csv").write_text("".join(lines[: first_row + 1]))
    accuracy = (ROOT / "results" / "accuracy.csv").read_text().splitlines(keepends=True)
    row = next(line for line in accuracy if ",89.4800,0.5910," in line)  # a MAML run archived under runs/
    (results / "accuracy.csv").write_text("".join(accuracy[:2]) + row.replace(",89.4800,0.5910,", ",89.4800,0.5911,"))
    assert check.main(["--results", str(results)]) == 1
    out = capsys.readouterr().out
    assert "compare_maml_omniglot_v02.csv row 1 p_perm: committed 0.0002, recomputed 0.00019999" in out
    assert "accuracy.csv row 1 ci95: committed 0.5911, recomputed 0.5910" in out
    assert "2 printed value(s) differ" in out


def test_runs_of_one_name_in_two_experiments_are_told_apart_by_learner(check, tmp_path) -> None:
    for experiment, learner in (("maml_omniglot", "maml"), ("protonet_omniglot", "protonet")):
        run = tmp_path / "runs" / experiment / "headline-bn"
        run.mkdir(parents=True)
        (run / "config.yaml").write_text(f"learner: {{name: {learner}}}\n")
    assert check.find_run(tmp_path, "headline-bn", "maml") == tmp_path / "runs" / "maml_omniglot" / "headline-bn"
    assert check.find_run(tmp_path, "headline-bn", "protonet").parent.name == "protonet_omniglot"
    with pytest.raises(SystemExit, match=r"expected one archived directory named '\*/headline-bn'"):
        check.find_run(tmp_path, "headline-bn")
