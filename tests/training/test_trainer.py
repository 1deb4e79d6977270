"""The training loop: run-directory files, validation and best checkpoint, budget and periodic checkpoints."""

from __future__ import annotations

import csv
import itertools
import os

import pytest
import torch
import yaml

from fewshot.cli.main import main
from fewshot.config import config_to_dict, read_config
from fewshot.errors import ConfigError
from fewshot.training import load_run, train, trainer
from fewshot.training.checkpoint import load_checkpoint
from fewshot.training.run_dir import read_json


def _log(run):
    with (run / "train_log.csv").open(newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture
def fake_clock(monkeypatch):
    """The trainer's clock advances exactly 1 s per reading."""
    ticks = itertools.count()
    monkeypatch.setattr(trainer, "_clock", lambda: float(next(ticks)))


def test_run_writes_every_run_dir_file(tmp_path, splits, tiny_config):
    cfg = tiny_config()
    run = tmp_path / "run"
    result = train(cfg, run, train_split=splits[0], val_split=splits[1], runs_root=tmp_path, quiet=True)

    assert read_config(run / "config.yaml") == cfg
    env = read_json(run / "env.json")
    assert env["torch"] == torch.__version__ and env["threads"] == 1 and env["device"] == "cpu"
    assert {"python", "platform", "git_commit", "git_dirty", "glibc_tunables", "date", "hostname"} <= env.keys()

    rows = _log(run)
    assert list(rows[0]) == ["episode", "loss", "acc", "lr", "elapsed_s", "val_acc"]
    assert [int(r["episode"]) for r in rows] == [4, 8, 12]
    assert [float(r["lr"]) for r in rows] == [1e-3, 5e-4, 2.5e-4]  # halved every 4 episodes
    val = [float(r["val_acc"]) for r in rows]
    assert all(0.0 <= v <= 1.0 for v in val)

    metrics = read_json(run / "metrics.json")
    assert metrics["status"] == "finished" == result.status
    assert metrics["episodes_done"] == 12 == metrics["episodes_total"]
    assert metrics["best_val_acc"] == pytest.approx(max(val), abs=1e-7)
    assert metrics["best_episode"] == [4, 8, 12][val.index(max(val))]  # ties keep the earliest
    assert metrics["step_seconds"] > 0 and metrics["overhead_seconds"] >= 0
    assert metrics["val_episode_set"].startswith(str(tmp_path / "_episode_sets"))

    best = load_checkpoint(run / "checkpoints" / "best.pt")
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert best["episode"] == metrics["best_episode"] and last["episode"] == 12 and last["status"] == "finished"
    loaded = load_run(run)
    assert loaded.episode == best["episode"] and loaded.image_shape == (1, 8, 8)
    state = loaded.learner.state_dict()
    assert all(torch.equal(state[k], best["model"][k]) for k in best["model"])
    assert load_run(run, "last").episode == 12


def test_a_new_run_never_writes_into_a_non_empty_directory(tmp_path, splits, tiny_config):
    run = tmp_path / "run"
    run.mkdir()
    (run / "notes.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"refusing to start a new run in .*not empty; pass --resume"):
        train(tiny_config(), run, train_split=splits[0], val_split=splits[1], runs_root=tmp_path)
    assert sorted(p.name for p in run.iterdir()) == ["notes.txt"]
    assert (run / "notes.txt").read_text() == "mine"


def test_budget_stops_cleanly_and_resume_extends_it(tmp_path, splits, tiny_config, fake_clock):
    kw = dict(train_split=splits[0], val_split=splits[1], runs_root=tmp_path, quiet=True)
    result = train(tiny_config("train.max_minutes=0.25", "train.episodes=1000"), tmp_path / "run", **kw)
    assert result.status == "stopped_budget"
    assert 0 < result.episodes_done < 1000
    metrics = read_json(tmp_path / "run" / "metrics.json")
    assert metrics["status"] == "stopped_budget" and metrics["train_seconds"] >= 15.0
    last = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert last["episode"] == result.episodes_done and last["status"] == "stopped_budget"
    assert metrics["best_episode"] is not None  # the final model was validated too

    more = train(tiny_config("train.max_minutes=1.0", "train.episodes=1000"), tmp_path / "run", resume=True, **kw)
    assert more.status == "stopped_budget" and more.episodes_done > result.episodes_done


def test_periodic_checkpoints_are_written_during_the_run(tmp_path, splits, tiny_config, fake_clock):
    seen = []

    def callback(info):
        path = tmp_path / "run" / "checkpoints" / "last.pt"
        seen.append(load_checkpoint(path)["episode"] if path.exists() else None)

    train(tiny_config("train.checkpoint_minutes=0.2"), tmp_path / "run", train_split=splits[0],
          val_split=splits[1], runs_root=tmp_path, quiet=True, callback=callback)  # fmt: skip
    saved = [e for e in seen if e is not None]
    assert saved and min(saved) < 12  # written during the run, not only at the end
    assert not [p for p in (tmp_path / "run" / "checkpoints").iterdir() if p.suffix == ".tmp"]


def test_without_validation_the_final_model_is_best(tmp_path, splits, tiny_config):
    run = tmp_path / "run"
    result = train(tiny_config("data.val_split=null"), run, train_split=splits[0], runs_root=tmp_path, quiet=True)
    assert result.best_val_acc is None and result.best_episode == 12
    assert all(r["val_acc"] == "" for r in _log(run))
    assert read_json(run / "metrics.json")["val_episode_set"] is None
    best, last = load_checkpoint(run / "checkpoints" / "best.pt"), load_checkpoint(run / "checkpoints" / "last.pt")
    assert all(torch.equal(best["model"][k], last["model"][k]) for k in last["model"])


def test_validation_classes_seen_in_training_are_warned_about(tmp_path, splits, tiny_config):
    with pytest.warns(UserWarning, match=r"4 of the 4 validation classes .* are also training classes"):
        train(tiny_config("train.episodes=1"), tmp_path / "run", train_split=splits[1], val_split=splits[1],
              runs_root=tmp_path, quiet=True)  # fmt: skip


def test_load_run_falls_back_to_last_before_the_first_validation(tmp_path, splits, tiny_config):
    def stop(info):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(tiny_config(), tmp_path / "run", train_split=splits[0], val_split=splits[1], runs_root=tmp_path,
              quiet=True, callback=stop)  # fmt: skip
    assert not (tmp_path / "run" / "checkpoints" / "best.pt").exists()
    with pytest.warns(UserWarning, match="has no best.pt"):
        loaded = load_run(tmp_path / "run")
    assert loaded.episode == 1 and loaded.checkpoint.name == "last.pt"
    with pytest.raises(ValueError, match="'best' or 'last'"):
        load_run(tmp_path / "run", "final")


@pytest.mark.skipif(not (trainer.Path(__file__).resolve().parents[3] / "shared" / "data" / "omniglot").is_dir(),
                    reason="the real Omniglot (../shared/data/omniglot) is not on this machine")  # fmt: skip
def test_train_command_on_real_omniglot(tmp_path, monkeypatch, capsys):
    """End to end through the CLI: a 2-episode run on the real data, refusal to reuse --out, resume."""
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path))
    flags = ["--set", "model.backbone_kwargs={hidden: 8}", "--set", "train.n_way=5", "--set", "train.episodes=2",
             "--set", "train.threads=1", "--set", "data.val_split=val", "--set", "data.train_split=train",
             "--set", "train.val_episodes=2", "--quiet"]  # fmt: skip
    out = str(tmp_path / "run")
    assert main(["train", *flags, "--out", out, "--dry-run"]) == 0
    printed = capsys.readouterr().out
    assert yaml.safe_load(printed)["train"]["episodes"] == 2 and f"# run directory: {out}" in printed
    assert not os.path.exists(out)
    assert main(["train", *flags, "--out", out]) == 0
    assert "finished: 2/2 episodes" in capsys.readouterr().out
    assert main(["train", *flags, "--out", out]) == 2
    assert "refusing to start a new run" in capsys.readouterr().err
    assert main(["train", "--resume", out, "--set", "train.episodes=4", "--quiet"]) == 0
    assert read_json(tmp_path / "run" / "metrics.json")["episodes_done"] == 4
    assert config_to_dict(read_config(tmp_path / "run" / "config.yaml"))["train"]["episodes"] == 4
    assert main(["train", "--out", out, "--resume", "--set", "train.lr=0.5"]) == 2
    assert "train.lr: run has 0.001, given 0.5" in capsys.readouterr().err


def test_a_run_that_fails_to_start_leaves_no_directory(tmp_path, splits, split_factory, tiny_config):
    with pytest.raises(ConfigError, match=r"n_way = 3 exceeds the 2 classes"):
        train(tiny_config(), tmp_path / "run", train_split=split_factory("train", n_classes=2),
              val_split=splits[1], runs_root=tmp_path)  # fmt: skip
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("follows", [True, False])
def test_learning_rate_changes_reach_every_norm_layer_through_one_generic_hook(
    tmp_path, splits, tiny_config, monkeypatch, follows
):
    """The trainer names no layer: it calls ``NormLayer.on_lr_scale`` (SWBN keeps ``α / lr`` through it)."""
    from fewshot.norms import NormLayer

    heard: list[tuple[str, float]] = []
    monkeypatch.setattr(NormLayer, "on_lr_scale", lambda self, factor: heard.append((type(self).__name__, factor)))
    train_split, val_split = splits
    cfg = tiny_config(f"train.whitening_rate_follows_lr={str(follows).lower()}")  # lr halves every 4 episodes
    train(cfg, tmp_path / "run", train_split=train_split, val_split=val_split, runs_root=tmp_path, quiet=True)
    factors = sorted({f for _, f in heard}, reverse=True)
    assert factors == ([0.5, 0.25, 0.125] if follows else [])
    assert {name for name, _ in heard} <= {"BatchNorm"}
    source = open(trainer.__file__).read().lower()
    assert "swbn" not in source and "whitening_rate_hook" not in source
