"""scripts/rederived_runs.py: a retrained run's numbers against the original's, paired on the same episodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest


@pytest.fixture()
def script(load_script):
    return load_script("rederived_runs")


def _eval(run: Path, name: str, correct: list[int], *, policy: str = "running", episodes: str = "h1") -> None:
    folder = run / "eval" / name
    folder.mkdir(parents=True)
    summary = {"mean": float(np.mean(correct)) / 5, "episode_hash": episodes, "policy": policy, "way": 5, "shot": 1,
               "query": 1, "checkpoint": "best"}  # fmt: skip
    (folder / "summary.json").write_text(json.dumps(summary))
    pd.DataFrame({
        "position": range(len(correct)), "index": range(len(correct)), "acc": [c / 5 for c in correct],
        "n_correct": correct, "n_query_total": 5,
    }).to_csv(folder / "episodes.csv", index=False)  # fmt: skip


def test_rows_pair_the_same_episode_file_and_policy(script, tmp_path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    _eval(old, "a-running", [5, 4, 5, 3])
    _eval(old, "a-support", [1, 1, 1, 1], policy="support")
    _eval(new, "x-running", [5, 5, 5, 4])
    _eval(new, "y-running", [0, 0, 0, 0], episodes="other")  # another episode file: never paired
    _eval(new, "x-support", [1, 1, 1, 1], policy="support")
    rows = {r["policy"]: r for r in script.rows(old, new)}
    running = rows["running"]
    assert running["original_mean"] == pytest.approx(85.0) and running["retrained_mean"] == pytest.approx(95.0)
    assert running["diff"] == pytest.approx(10.0) and running["episodes"] == 4
    assert running["original_ci95"] == pytest.approx(100 * 1.96 * np.std([1, 0.8, 1, 0.6], ddof=1) / 2)
    assert running["inside_original_ci"] is True
    assert rows["support"]["diff"] == 0.0 and rows["support"]["inside_original_ci"] is True


def test_a_missing_evaluation_is_named_with_how_to_make_it(script, tmp_path) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    _eval(old, "a-running", [5, 4, 5, 3])
    _eval(new, "x-running", [5, 5, 5, 4], episodes="other")
    with pytest.raises(ValueError, match=r"has no evaluation matching .* \(5-way 1-shot 1-query, policy running"):
        script.rows(old, new)


def test_main_writes_the_command_and_refuses_to_overwrite(script, tmp_path, capsys) -> None:
    old, new = tmp_path / "old", tmp_path / "new"
    _eval(old, "a-running", [5, 4, 5, 3])
    _eval(new, "x-running", [5, 5, 5, 4])
    out = tmp_path / "moved.csv"
    assert script.main([f"{old}={new}", "--out", str(out)]) == 0
    assert out.read_text().splitlines()[0] == f"# command: python scripts/rederived_runs.py {old}={new} --out {out}"
    assert pd.read_csv(out, comment="#")["diff"].tolist() == pytest.approx([10.0])
    with pytest.raises(SystemExit):
        script.main([f"{old}={new}", "--out", str(out)])
    assert "exists; pass --force" in capsys.readouterr().err
