"""Runs on a chosen device: ``--device cpu`` through train, resume, eval, predict; the device recorded.

A CUDA machine additionally trains on the GPU and resumes and evaluates that run on the CPU (skipped, saying
so, elsewhere). Deterministic training (``--deterministic``) gives bit-identical logs and checkpoints twice.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from fewshot.cli.main import main
from fewshot.config import read_config
from fewshot.training.checkpoint import load_checkpoint
from fewshot.training.run_dir import load_run, read_json


def _flags(data: Path, *extra: str) -> list[str]:
    options = {"path": str(data), "mode": "L", "image_size": 16}
    sets = (
        "data.dataset=imagefolder", "data.protocol=folder", f"data.options={json.dumps(options)}",
        "data.train_split=train", "data.val_split=null", "data.test_split=test",
        "model.backbone_kwargs={hidden: 8}", "train.n_way=3", "train.n_shot=1", "train.n_query=2",
        "train.episodes=4", "train.lr_step_episodes=null", "train.max_minutes=null", "train.log_every=2",
        "train.threads=1", "eval.n_way=3", "eval.n_shot=1", "eval.n_query=2", "eval.episodes=4", *extra,
    )  # fmt: skip
    return [arg for s in sets for arg in ("--set", s)] + ["--quiet"]


@pytest.fixture
def data(tmp_path, monkeypatch, bar_dataset):
    monkeypatch.setenv("FEWSHOT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("FEWSHOT_CACHE", str(tmp_path / "cache"))
    return bar_dataset(tmp_path / "data", ("train", "test"))


def test_cpu_run_records_its_device_and_resumes_and_evaluates_on_cpu(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert main(["train", *_flags(data), "--device", "cpu", "--out", str(run)]) == 0
    env = read_json(run / "env.json")
    assert env["device"] == "cpu" and env["gpu"] is None and env["numerics"]["precision"] == "fp32"
    assert set(env) >= {"cuda", "cudnn", "driver", "gpu_memory_gib"}
    assert read_config(run / "config.yaml").device == "cpu"
    assert main(["train", "--resume", str(run), "--set", "train.episodes=6", "--device", "cpu", "--quiet"]) == 0
    assert read_json(run / "env.json")["resumes"][0]["device"] == "cpu"
    assert read_json(run / "metrics.json")["episodes_done"] == 6
    capsys.readouterr()
    assert main(["eval", "--run", str(run), "--device", "cpu", "--json"]) == 0
    assert 0.0 <= json.loads(capsys.readouterr().out)["summary"]["mean"] <= 1.0
    loaded = load_run(run, device="cpu")
    assert all(p.device.type == "cpu" for p in loaded.learner.parameters())


def test_a_run_resumes_on_another_device_key(tmp_path, data):
    """``device`` may change on resume (it is not what was trained); the session's change is recorded."""
    run = tmp_path / "run"
    assert main(["train", *_flags(data), "--set", "device=auto", "--out", str(run)]) == 0
    assert main(["train", "--resume", str(run), "--set", "train.episodes=6", "--device", "cpu", "--quiet"]) == 0
    assert read_json(run / "env.json")["resumes"][0]["config_changes"]["device"] == ["auto", "cpu"]


def test_deterministic_training_twice_gives_identical_logs_and_checkpoints(tmp_path, data):
    runs = [tmp_path / "a", tmp_path / "b"]
    for run in runs:
        assert main(["train", *_flags(data), "--device", "cpu", "--deterministic", "--out", str(run)]) == 0
    assert read_json(runs[0] / "env.json")["numerics"]["deterministic"] is True
    log = [(r / "train_log.csv").read_text().splitlines() for r in runs]
    assert [line.split(",")[:3] for line in log[0]] == [line.split(",")[:3] for line in log[1]]  # episode, loss, acc
    a, b = (load_checkpoint(r / "checkpoints" / "last.pt")["model"] for r in runs)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("precision", ["bf16", "tf32"])
def test_precision_key_trains_and_is_recorded(tmp_path, data, precision):
    run = tmp_path / "run"
    assert main(["train", *_flags(data, f"precision={precision}"), "--device", "cpu", "--out", str(run)]) == 0
    assert read_json(run / "env.json")["numerics"]["precision"] == precision
    assert read_json(run / "metrics.json")["status"] == "finished"


def test_bad_precision_is_a_config_error(data, capsys):
    assert main(["train", *_flags(data, "precision=fp16"), "--dry-run"]) == 2
    assert "precision = 'fp16': expected one of fp32, tf32, bf16" in capsys.readouterr().err


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device: training on a GPU needs one")
def test_gpu_run_resumes_and_evaluates_on_cpu(tmp_path, data, capsys):
    run = tmp_path / "run"
    assert main(["train", *_flags(data), "--device", "cuda", "--out", str(run)]) == 0
    env = read_json(run / "env.json")
    assert env["device"] == "cuda:0" and env["gpu"] and env["cuda"]
    assert main(["train", "--resume", str(run), "--set", "train.episodes=6", "--device", "cpu", "--quiet"]) == 0
    assert main(["eval", "--run", str(run), "--device", "cpu"]) == 0
    assert main(["eval", "--run", str(run), "--device", "cuda", "--no-reuse"]) == 0


def test_training_restores_the_process_numerics(tmp_path, data):
    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.matmul.allow_tf32)
    assert main(["train", *_flags(data, "precision=tf32"), "--deterministic", "--out", str(tmp_path / "r")]) == 0
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cuda.matmul.allow_tf32) == before
