"""Training curves: runs' train_log.csv -> one PNG (loss and validation accuracy), labels with norm options."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from PIL import Image

from fewshot.cli.main import main
from fewshot.errors import DataError
from fewshot.reports.curves import plot_training_curves, read_train_log, run_curve_label

LOG_HEADER = "episode,loss,acc,lr,elapsed_s,val_acc\n"


def _run(root: Path, name: str, norm: str, norm_kwargs: dict, rows: str) -> Path:
    run = root / name
    run.mkdir(parents=True)
    cfg = {"learner": {"name": "maml"}, "model": {"backbone": "conv4_maml", "norm": norm, "norm_kwargs": norm_kwargs}}
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    (run / "train_log.csv").write_text(LOG_HEADER + rows)
    return run


@pytest.fixture()
def runs(tmp_path):
    bn_log = "320,2.9,0.3,0.001,15,\n640,2.5,0.4,0.001,30,0.61\n"
    sw_log = "320,3.0,0.3,0.001,20,\n640,2.8,0.35,0.001,45,0.52\n"
    bn = _run(tmp_path, "20260101T000000Z-aaaaaaa", "batchnorm", {}, bn_log)
    sw = _run(tmp_path, "20260101T010000Z-bbbbbbb", "swbn", {"shrinkage": 0.1, "alpha": 3.125e-5}, sw_log)
    return bn, sw


def test_log_gets_minutes_and_labels_show_norm_options(runs):
    bn, sw = runs
    log = read_train_log(sw)
    assert log["minutes"].tolist() == [20 / 60, 45 / 60]
    assert log["val_acc"].isna().tolist() == [True, False]
    assert run_curve_label(bn) == "maml/conv4_maml/batchnorm (20260101T000000Z-aaaaaaa)"
    assert run_curve_label(sw) == "maml/conv4_maml/swbn[alpha=3.125e-05,shrinkage=0.1] (20260101T010000Z-bbbbbbb)"


def test_cli_writes_a_png_with_its_command_and_refuses_to_overwrite(runs, tmp_path, capsys):
    out = tmp_path / "curves.png"
    assert main(["curves", "--runs", *map(str, runs), "--out", str(out), "--x", "episodes"]) == 0
    with Image.open(out) as image:
        # 11 x (4 + 0.25 per run: the legend below the panels) inches at 120 dpi
        assert image.format == "PNG" and image.size == (1320, 480 + 30 * len(runs))
        assert image.info["Description"].startswith("python run_episode.py curves --runs ")
        assert "--x episodes" in image.info["Description"]
    capsys.readouterr()
    assert main(["curves", "--runs", str(runs[0]), "--out", str(out)]) == 2
    assert "refusing to overwrite" in capsys.readouterr().err
    assert main(["curves", "--runs", str(runs[0]), "--out", str(tmp_path / "c.png"), "--smooth", "0"]) == 2
    assert "smooth must be an int >= 1" in capsys.readouterr().err
    assert main(["curves", "--runs", str(runs[0]), "--out", str(tmp_path / "c.jpg")]) == 2
    assert "ending in .png, got" in capsys.readouterr().err


def test_bad_inputs_name_what_was_expected(runs, tmp_path):
    bad = _run(tmp_path, "no_val", "batchnorm", {}, "")
    (bad / "train_log.csv").write_text("episode,loss\n1,2.0\n")
    with pytest.raises(DataError, match=r"missing: \['elapsed_s', 'val_acc'\]"):
        plot_training_curves([bad], tmp_path / "x.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "config.yaml").write_text(yaml.safe_dump({"model": {"norm": "batchnorm"}}))
    with pytest.raises(DataError, match="has no train_log.csv"):
        plot_training_curves([empty], tmp_path / "x.png")
    with pytest.raises(ValueError, match="x must be one of 'minutes', 'episodes', got 'steps'"):
        plot_training_curves(runs, tmp_path / "x.png", x="steps")
    with pytest.raises(ValueError, match="smooth must be an int >= 1"):
        plot_training_curves(runs, tmp_path / "x.png", smooth=0)
    assert not (tmp_path / "x.png").exists()
