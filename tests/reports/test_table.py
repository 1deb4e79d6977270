"""Tests of the results table (runs -> DataFrame -> md/csv/latex) and the accuracy-vs-shots plot."""

import io
import json
import warnings

import numpy as np
import pandas as pd
import pytest
import yaml

from fewshot.errors import DataError
from fewshot.evaluation.evaluate import EvalResult
from fewshot.evaluation.outputs import write_eval
from fewshot.reports.plot import plot_accuracy_vs_shots
from fewshot.reports.table import COLUMNS, find_runs, format_table, runs_table, to_latex, to_markdown


def make_run(
    root, name, *, norm, shot=1, correct=(14, 15), seconds=90.0, evaluated=True, policy="running", norm_kwargs=None
):
    """A run directory with config.yaml, metrics.json and (optionally) one evaluation of 15-query episodes."""
    run = root / name
    run.mkdir(parents=True)
    cfg = {
        "name": "t", "seed": 0,
        "data": {"dataset": "omniglot", "protocol": "vinyals", "test_split": "test", "options": {}},
        "model": {"backbone": "conv4", "norm": norm, "norm_kwargs": norm_kwargs or {}},
        "learner": {"name": "protonet", "kwargs": {}},
        "eval": {"norm_policy": policy},
    }  # fmt: skip
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "metrics.json").write_text(json.dumps({"episodes_done": 1200, "train_seconds": seconds}))
    if evaluated:
        n_correct = np.array(correct)
        result = EvalResult(
            index=np.arange(len(correct)), acc=n_correct / 15, n_correct=n_correct,
            n_query_total=np.full(len(correct), 15), n_way=1, n_shot=shot, n_query=15, policy=policy, seconds=1.0,
        )  # fmt: skip
        write_eval(run, result, {"episode_hash": f"{shot:064d}", "checkpoint": "best", "seed": 1234,
                                 "dataset": "omniglot", "protocol": "vinyals"})  # fmt: skip
    return run


def test_runs_table_has_fixed_columns_and_percent_values(tmp_path):
    a = make_run(tmp_path, "r1", norm="swbn", correct=(15, 12))  # 100%, 80%
    b = make_run(tmp_path, "r2", norm="batchnorm", correct=(15, 15, 15))
    frame = runs_table([a, b])
    assert tuple(frame.columns) == COLUMNS
    assert frame["norm"].tolist() == ["batchnorm", "swbn"]  # sorted
    swbn = frame.iloc[1]
    assert swbn["mean"] == pytest.approx(90.0)
    assert swbn["ci95"] == pytest.approx(100 * 1.96 * np.std([1.0, 0.8], ddof=1) / np.sqrt(2))
    assert (swbn["episodes"], swbn["seed"], swbn["way"], swbn["shot"], swbn["query"]) == (2, 1234, 1, 1, 15)
    assert swbn["train_minutes"] == pytest.approx(1.5) and swbn["train_episodes"] == 1200
    assert swbn["run"] == f"{tmp_path.name}/r1" and swbn["policy"] == "running"


def test_a_study_run_is_named_by_its_grid_cell_and_seed(tmp_path):
    run = make_run(tmp_path / "study" / "sweeps" / "mini" / "batchnorm", "seed0", norm="batchnorm")
    assert runs_table([run])["run"].tolist() == ["sweeps/mini/batchnorm/seed0"]


def test_run_column_tells_apart_runs_of_the_same_name_in_different_experiments(tmp_path):
    a = make_run(tmp_path / "protonet_omniglot", "headline-bn", norm="batchnorm")
    b = make_run(tmp_path / "maml_omniglot", "headline-bn", norm="batchnorm")
    frame = runs_table([a, b])
    assert sorted(frame["run"]) == ["maml_omniglot/headline-bn", "protonet_omniglot/headline-bn"]


def test_norm_options_are_part_of_the_norm_label(tmp_path):
    a = make_run(tmp_path, "r1", norm="swbn", norm_kwargs={"shrinkage": 0.1, "alpha": 3.125e-5})
    b = make_run(tmp_path, "r2", norm="swbn")
    assert runs_table([a, b])["norm"].tolist() == ["swbn", "swbn[alpha=3.125e-05,shrinkage=0.1]"]


def test_unevaluated_run_keeps_a_row_with_empty_accuracy(tmp_path):
    run = make_run(tmp_path, "r1", norm="swbn", evaluated=False)
    frame = runs_table([run])
    assert len(frame) == 1 and np.isnan(frame.loc[0, "mean"]) and frame.loc[0, "policy"] == "running"
    md = to_markdown(frame)
    assert "| – |" in md  # visibly empty, not dropped
    csv = pd.read_csv(io.StringIO(format_table(frame, "csv")))
    assert csv["mean"].isna().all() and csv.loc[0, "norm"] == "swbn"


def test_markdown_layout(tmp_path):
    frame = runs_table([make_run(tmp_path, "r1", norm="swbn", correct=(15, 12))])
    md = to_markdown(frame[["norm", "shot", "mean", "ci95"]])
    ci = 100 * 1.96 * np.std([1.0, 0.8], ddof=1) / np.sqrt(2)
    assert md == f"| norm | shot | mean | ci95 |\n|---|---:|---:|---:|\n| swbn | 1 | 90.00 | {ci:.2f} |\n"


def test_latex_is_escaped_booktabs(tmp_path):
    frame = runs_table([make_run(tmp_path, "r_1", norm="group_whiten")])
    tex = to_latex(frame)
    assert tex.startswith("\\begin{tabular}{") and "\\toprule" in tex and tex.rstrip().endswith("\\end{tabular}")
    assert "group\\_whiten" in tex and "r\\_1" in tex and "train\\_episodes" in tex


def test_csv_round_trips(tmp_path):
    frame = runs_table([make_run(tmp_path, "r1", norm="swbn", correct=(15, 12))])
    back = pd.read_csv(io.StringIO(format_table(frame, "csv")))
    assert list(back.columns) == list(COLUMNS)
    assert back.loc[0, "mean"] == pytest.approx(90.0) and back.loc[0, "episodes"] == 2


def test_unknown_format_and_non_run_directory(tmp_path):
    with pytest.raises(ValueError, match="unknown table format 'html'"):
        format_table(runs_table([make_run(tmp_path, "r1", norm="swbn")]), "html")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="is not a run directory"):
        find_runs([tmp_path / "empty"])
    with pytest.raises(DataError, match="no config.yaml"):
        runs_table([tmp_path / "empty"])


def test_find_runs_expands_a_study_folder(tmp_path):
    a = make_run(tmp_path / "study", "batchnorm", norm="batchnorm")
    b = make_run(tmp_path / "study", "swbn", norm="swbn")
    assert find_runs([tmp_path / "study", a]) == [a, b]


def test_plot_writes_png_and_refuses_to_overwrite(tmp_path):
    runs = [make_run(tmp_path, f"r{k}{norm}", norm=norm, shot=k) for k in (1, 5) for norm in ("batchnorm", "swbn")]
    frame = runs_table(runs)
    path = plot_accuracy_vs_shots(frame, tmp_path / "plot.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(FileExistsError, match="refusing to overwrite"):
        plot_accuracy_vs_shots(frame, tmp_path / "plot.png")
    with pytest.raises(ValueError, match="no evaluated runs"):
        plot_accuracy_vs_shots(runs_table([make_run(tmp_path, "x", norm="swbn", evaluated=False)]), tmp_path / "p.png")


def test_plot_keeps_query_counts_apart(tmp_path):
    # The same run evaluated with 15 and with 1 query per class: two protocols (two panels), not a duplicate point.
    frame = runs_table([make_run(tmp_path, "r1", norm="batchnorm")])
    one_query = frame.assign(query=pd.array([1], dtype="Int64"), mean=frame["mean"] + 1.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a duplicate point would warn "given by more than one run"
        plot_accuracy_vs_shots(pd.concat([frame, one_query]), tmp_path / "plot.png")
    with pytest.warns(UserWarning, match="given by more than one run"):
        plot_accuracy_vs_shots(pd.concat([frame, frame]), tmp_path / "again.png")


def test_published_column_matches_learner_dataset_way_and_shot(tmp_path):
    from fewshot.reports.published import add_published

    one = make_run(tmp_path, "r1", norm="swbn", shot=1)
    five = make_run(tmp_path, "r5", norm="batchnorm", shot=5)
    frame = runs_table([one, five])
    frame.loc[:, "way"] = pd.array([5, 5], dtype="Int64")  # make_run evaluates 1-way; the papers report 5-way
    out = add_published(frame)
    by_shot = dict(zip(out["shot"].tolist(), out["published_bn"].tolist(), strict=True))
    assert by_shot == {1: 98.8, 5: 99.7}
    assert set(out["published_source"]) == {"Snell et al. 2017, Tables 1-2"}
    assert "published_bn" not in frame.columns  # a copy; the input frame is unchanged
    unpublished = add_published(runs_table([one]))  # 1-way: no paper reports it
    assert unpublished["published_bn"].isna().all() and unpublished["published_source"].isna().all()


def test_table_cli_writes_csv_with_command_line_and_published(tmp_path, monkeypatch):
    from fewshot.cli.main import main

    make_run(tmp_path / "runs", "r1", norm="batchnorm")
    out = tmp_path / "acc.csv"
    monkeypatch.setattr("sys.argv", ["run_episode.py", "table", "--runs", str(tmp_path / "runs")])
    assert main(["table", "--runs", str(tmp_path / "runs"), "--format", "csv", "--published", "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert lines[0].startswith("# command: python run_episode.py table")
    frame = pd.read_csv(out, comment="#")
    assert list(frame.columns)[-2:] == ["published_bn", "published_source"]
    before = out.read_text()
    assert main(["table", "--runs", str(tmp_path / "runs"), "--format", "csv", "--out", str(out)]) == 2
    assert out.read_text() == before  # refused: not overwritten without --force
