"""Exact resume: a run stopped after k episodes and resumed ends bitwise equal to an uninterrupted run."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from fewshot.errors import ConfigError
from fewshot.training import train
from fewshot.training.checkpoint import load_checkpoint
from fewshot.training.run_dir import read_json, resume_config


def _interrupt_at(k: int):
    def callback(info):
        if info.episodes_done >= k:
            raise KeyboardInterrupt

    return callback


def _assert_same_state(a: Path, b: Path) -> None:
    """Model (parameters and buffers), optimizer and scheduler of two last.pt files are bitwise equal."""
    ca, cb = load_checkpoint(a / "checkpoints" / "last.pt"), load_checkpoint(b / "checkpoints" / "last.pt")
    assert ca["episode"] == cb["episode"]
    assert ca["model"].keys() == cb["model"].keys()
    for key in ca["model"]:
        assert torch.equal(ca["model"][key], cb["model"][key]), key
    sa, sb = ca["optimizer"]["state"], cb["optimizer"]["state"]
    assert sa.keys() == sb.keys()
    for p in sa:
        for name in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(sa[p][name], sb[p][name]), (p, name)
    assert ca["scheduler"] == cb["scheduler"]
    assert ca["optimizer"]["param_groups"][0]["lr"] == cb["optimizer"]["param_groups"][0]["lr"]


def _log_rows(run: Path) -> list[dict[str, str]]:
    with (run / "train_log.csv").open(newline="") as f:
        return [{k: v for k, v in row.items() if k != "elapsed_s"} for row in csv.DictReader(f)]


@pytest.mark.parametrize("case", ["protonet-batchnorm", "maml-batchnorm", "protonet-swbn", "maml-swbn"])
def test_interrupted_and_resumed_run_equals_uninterrupted_run(case, tmp_path, splits, tiny_config):
    cfg = tiny_config(case=case)
    train_split, val_split = splits
    kw = dict(train_split=train_split, val_split=val_split, runs_root=tmp_path, quiet=True)
    full = train(cfg, tmp_path / "full", **kw)
    assert full.status == "finished" and full.episodes_done == 12

    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "split", callback=_interrupt_at(6), **kw)
    stopped = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")
    assert stopped["episode"] == 6 and stopped["status"] == "interrupted"
    assert read_json(tmp_path / "split" / "metrics.json")["status"] == "interrupted"
    # a killed process may have logged rows after its last checkpoint: resume must drop them
    with (tmp_path / "split" / "train_log.csv").open("a", newline="") as f:
        csv.writer(f).writerow([8, 9.9, 0.1, 0.001, 1.0, ""])

    resumed = train(cfg, tmp_path / "split", resume=True, **kw)
    assert resumed.status == "finished" and resumed.episodes_done == 12
    _assert_same_state(tmp_path / "full", tmp_path / "split")
    assert (resumed.best_val_acc, resumed.best_episode) == (full.best_val_acc, full.best_episode)
    best_full = load_checkpoint(tmp_path / "full" / "checkpoints" / "best.pt")
    best_split = load_checkpoint(tmp_path / "split" / "checkpoints" / "best.pt")
    assert all(torch.equal(best_full["model"][k], best_split["model"][k]) for k in best_full["model"])
    assert _log_rows(tmp_path / "full") == _log_rows(tmp_path / "split")
    env = read_json(tmp_path / "split" / "env.json")
    assert len(env["resumes"]) == 1


def test_swbn_whitening_matrix_and_rate_survive_resume(tmp_path, splits, tiny_config):
    """SWBN's W is a buffer (in last.pt); its rate factor is not, so resume must re-apply lr / base lr."""
    cfg = tiny_config(case="protonet-swbn")
    train_split, val_split = splits
    kw = dict(train_split=train_split, val_split=val_split, runs_root=tmp_path, quiet=True)
    train(cfg, tmp_path / "full", **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "split", callback=_interrupt_at(10), **kw)  # lr already halved twice
    train(cfg, tmp_path / "split", resume=True, **kw)
    full = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    split = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.pt")["model"]
    keys = [k for k in full if k.endswith("whitening_matrix")]
    assert len(keys) == 4
    eye = torch.eye(4).expand(2, 4, 4)
    for k in keys:
        assert not torch.equal(full[k], eye), f"{k} never moved: the test would not notice a wrong rate"
        assert torch.equal(full[k], split[k]), k


def test_resume_with_more_episodes_continues_exactly(tmp_path, splits, tiny_config):
    """Stopping by the episode count and resuming with a larger one gives the same final state."""
    train_split, val_split = splits
    kw = dict(train_split=train_split, val_split=val_split, runs_root=tmp_path, quiet=True)
    train(tiny_config(), tmp_path / "full", **kw)
    first = train(tiny_config("train.episodes=6"), tmp_path / "split", **kw)
    assert first.status == "finished" and first.episodes_done == 6
    cfg = resume_config(tmp_path / "split", overrides=["train.episodes=12"])
    assert cfg.train.episodes == 12
    train(cfg, tmp_path / "split", resume=True, **kw)
    _assert_same_state(tmp_path / "full", tmp_path / "split")


def test_resume_with_a_different_config_names_the_keys(tmp_path, splits, tiny_config):
    train_split, val_split = splits
    train(tiny_config("train.episodes=2"), tmp_path / "run", train_split=train_split, val_split=val_split,
          runs_root=tmp_path, quiet=True)  # fmt: skip
    with pytest.raises(ConfigError, match=r"train\.lr: run has 0\.001, given 0\.01.*norm_policy"):
        resume_config(tmp_path / "run", overrides=["train.lr=0.01", "train.norm_policy=support"])
    # budget-like keys may change
    assert resume_config(tmp_path / "run", overrides=["train.max_minutes=5"]).train.max_minutes == 5.0


def test_resume_without_a_checkpoint_is_refused(tmp_path, splits, tiny_config):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=r"cannot resume .*no config\.yaml and no checkpoints/last\.pt"):
        train(tiny_config(), tmp_path / "empty", resume=True, train_split=splits[0], val_split=splits[1])


def test_resume_without_a_directory_takes_the_latest_run_of_the_experiment(tmp_path):
    from fewshot.training.run_dir import find_latest_run

    for stamp in ("20250101T000000Z-abc1234", "20250102T000000Z-abc1234", "20250103T000000Z-abc1234"):
        (tmp_path / "exp" / stamp / "checkpoints").mkdir(parents=True)
    for stamp in ("20250101T000000Z-abc1234", "20250102T000000Z-abc1234"):  # the newest has no checkpoint yet
        (tmp_path / "exp" / stamp / "checkpoints" / "last.pt").write_bytes(b"")
    assert find_latest_run("exp", tmp_path).name == "20250102T000000Z-abc1234"
    with pytest.raises(ConfigError, match=r"--resume found no run of experiment 'other'"):
        find_latest_run("other", tmp_path)


def test_augmented_run_resumes_exactly_and_validates_on_unaugmented_episodes(tmp_path, splits, tiny_config):
    """``data.augment`` draws from ``(seed, episode)`` only: an interrupted run resumes bit for bit; the
    augmentation changes the training but never the validation episodes (a plain run validates on the same)."""
    from fewshot.training.build import build_train_sampler

    cfg = tiny_config("data.augment={flip: true, crop_padding: 2}")
    train_split, val_split = splits
    kw = dict(train_split=train_split, val_split=val_split, runs_root=tmp_path, quiet=True)
    full = train(cfg, tmp_path / "full", **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, tmp_path / "split", callback=_interrupt_at(6), **kw)
    resumed = train(cfg, tmp_path / "split", resume=True, **kw)
    assert resumed.episodes_done == full.episodes_done == 12
    _assert_same_state(tmp_path / "full", tmp_path / "split")
    assert _log_rows(tmp_path / "full") == _log_rows(tmp_path / "split")

    plain = train(tiny_config(), tmp_path / "plain", **kw)
    a = load_checkpoint(tmp_path / "full" / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(tmp_path / "plain" / "checkpoints" / "last.pt")["model"]
    assert any(not torch.equal(a[k], b[k]) for k in a)  # the augmentation reached the training episodes
    assert plain.episodes_done == 12
    assert build_train_sampler(cfg, train_split).augment is not None
    assert build_train_sampler(tiny_config(), train_split).augment is None
    val_files = {read_json(tmp_path / run / "metrics.json")["val_episode_set"] for run in ("full", "plain")}
    assert len(val_files) == 1 and None not in val_files  # one validation file: its episodes carry no draw
