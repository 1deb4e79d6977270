"""Faults of the files fewshot writes and of the operating system, reproduced end to end (issue 12).

Each test provokes one fault class through the real CLI (in a child process where a signal, a file-size limit
or a read-only folder is involved; see ``fault_child.py``) and checks the one-line error, the exit code, and
that nothing already written is lost or changed.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

import fewshot.training.build
import fewshot.training.trainer
from fewshot.cli.main import main
from fewshot.config import load_config
from fewshot.errors import DataError
from fewshot.reports.table import runs_table
from fewshot.training import load_run, train
from fewshot.training.checkpoint import load_checkpoint


def _training_conftest():
    spec = importlib.util.spec_from_file_location("training_conftest", Path(__file__).with_name("conftest.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


TINY, make_split = _training_conftest().TINY, _training_conftest().make_split
REPO = Path(__file__).resolve().parents[2]
CHILD = Path(__file__).with_name("fault_child.py")
TRAIN = ["train", *[a for o in TINY for a in ("--set", o)], "--quiet"]


def _spawn(args, root, *, slow=False, preexec=None):
    env = {**os.environ, "PYTHONPATH": str(REPO), "FEWSHOT_RUNS": str(root)}
    cmd = [sys.executable, str(CHILD), *(["--slow"] if slow else []), "--", *args]
    return subprocess.Popen(
        cmd, env=env, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=preexec
    )


def _run(args, root, **kw):
    proc = _spawn(args, root, **kw)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out, err


def _wait_for_step(proc, episodes: int) -> None:
    for line in proc.stdout:
        if line.startswith("step ") and int(line.split()[1]) >= episodes:
            return
    raise AssertionError(f"child ended before step {episodes}: {proc.stderr.read()}")


def _one_error_line(err: str, pattern: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error: ")]
    assert "Traceback" not in err and len(lines) == 1, err
    assert pattern in lines[0], lines[0]
    return lines[0]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _splits():
    return make_split("train"), make_split("val", n_classes=4, seed=1)


def _train(run, root, *extra, stop_at=None):
    """Train the TINY run in this process (stopped like Ctrl-C after ``stop_at`` episodes)."""
    train_split, val_split = _splits()
    cfg = load_config(None, [*TINY, *extra])

    def stop(info):
        if stop_at is not None and info.episodes_done >= stop_at:
            raise KeyboardInterrupt

    kw = dict(train_split=train_split, val_split=val_split, runs_root=root, quiet=True, callback=stop)
    if stop_at is None:
        return train(cfg, run, **kw)
    with pytest.raises(KeyboardInterrupt):
        train(cfg, run, **kw)


def _assert_same_model(a: Path, b: Path) -> None:
    ma, mb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    assert ma.keys() == mb.keys() and all(torch.equal(ma[k], mb[k]) for k in ma)


@pytest.fixture
def synthetic_data(monkeypatch):
    """In-process CLI commands load the synthetic splits (as in fault_child.py) instead of a dataset."""
    splits = dict(zip(("train", "val"), _splits(), strict=True))
    splits["test"] = make_split("test", n_classes=4, seed=2)
    for module in (fewshot.training.build, fewshot.training.trainer):
        monkeypatch.setattr(module, "build_split", lambda cfg, name: splits[name])


# ------------------------------------------------------------------------------------------------ signals
def test_sigterm_stops_like_ctrl_c_and_the_run_resumes_exactly(tmp_path):
    run = tmp_path / "run"
    proc = _spawn([*TRAIN, "--out", str(run)], tmp_path, slow=True)
    _wait_for_step(proc, 2)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "SIGTERM: stopping after this step" in err and "Traceback" not in err
    last = load_checkpoint(run / "checkpoints" / "last.pt")
    assert last["status"] == "interrupted" and 2 <= last["episode"] < 12
    assert json.loads((run / "metrics.json").read_text())["status"] == "interrupted"
    assert runs_table([run])["status"].tolist() == ["interrupted"]

    code, out, err = _run(["train", "--resume", str(run), "--quiet"], tmp_path)
    assert code == 0 and out.startswith("finished: 12/12 episodes"), err
    _train(tmp_path / "full", tmp_path)
    _assert_same_model(run / "checkpoints" / "last.pt", tmp_path / "full" / "checkpoints" / "last.pt")


def test_a_run_killed_before_its_first_checkpoint_starts_again_in_place(tmp_path):
    run = tmp_path / "run"
    proc = _spawn([*TRAIN, "--out", str(run)], tmp_path, slow=True)
    _wait_for_step(proc, 1)  # validation (and best.pt) comes at episode 4, last.pt at the end
    proc.kill()
    proc.wait(timeout=60)
    assert not list((run / "checkpoints").glob("*.pt")) and (run / "config.yaml").is_file()
    assert json.loads((run / "metrics.json").read_text())["status"] == "running"
    assert runs_table([run])["status"].tolist() == ["interrupted"]  # its process is gone

    code, out, err = _run(["train", "--resume", str(run), "--quiet"], tmp_path)
    assert code == 0 and "stopped before its first checkpoint" in err and out.startswith("finished: 12/12"), err
    _train(tmp_path / "full", tmp_path)
    _assert_same_model(run / "checkpoints" / "last.pt", tmp_path / "full" / "checkpoints" / "last.pt")


# -------------------------------------------------------------------------------------------- full disk
def _file_size_limit(n_bytes: int):
    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write beyond the limit fails with EFBIG, as on a full disk
        resource.setrlimit(resource.RLIMIT_FSIZE, (n_bytes, n_bytes))

    return limit


def test_a_full_disk_never_loses_the_last_good_checkpoint(tmp_path):
    run = tmp_path / "run"
    _train(run, tmp_path, stop_at=6)
    kept = {p: _digest(run / p) for p in ("checkpoints/last.pt", "checkpoints/best.pt")}

    code, _, err = _run(["train", "--resume", str(run), "--quiet"], tmp_path, preexec=_file_size_limit(8192))
    assert code == 2
    _one_error_line(err, "could not write checkpoints/best.pt")
    assert "last.pt still holds the last complete checkpoint (episode 6)" in err and f"--resume {run}" in err
    assert {p: _digest(run / p) for p in kept} == kept  # nothing already written is lost or changed
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["best.pt", "last.pt"]  # no temp files
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["status"] == "failed" and metrics["error"].startswith("StorageError")

    code, out, err = _run(["train", "--resume", str(run), "--quiet"], tmp_path)
    assert code == 0 and out.startswith("finished: 12/12"), err
    _train(tmp_path / "full", tmp_path)
    _assert_same_model(run / "checkpoints" / "last.pt", tmp_path / "full" / "checkpoints" / "last.pt")


def test_a_full_disk_at_the_first_checkpoint_leaves_a_run_that_starts_again(tmp_path):
    run = tmp_path / "run"
    command = [*TRAIN, "--out", str(run)]
    code, _, err = _run(command, tmp_path, preexec=_file_size_limit(8192))
    assert code == 2
    _one_error_line(err, "there is no checkpoint yet; start the run again in place with the same command")
    code, out, err = _run(command, tmp_path)  # the same command, once the disk has room
    assert code == 0 and out.startswith("finished: 12/12"), err


# ------------------------------------------------------------------------------------------- read-only
def _without_root_file_access():
    """Drop CAP_DAC_OVERRIDE, CAP_DAC_READ_SEARCH and CAP_FOWNER so that folder permissions bind root too."""
    libc = ctypes.CDLL(None, use_errno=True)
    for cap in (1, 2, 3):
        if libc.prctl(24, cap, 0, 0, 0) != 0 and os.geteuid() == 0:  # 24 = PR_CAPBSET_DROP
            raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP)")


def test_a_read_only_folder_is_detected_before_training_and_before_scoring(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o555)
    try:
        code, _, err = _run([*TRAIN, "--out", str(parent / "run")], tmp_path, preexec=_without_root_file_access)
        assert code == 2
        _one_error_line(err, "cannot write the run's checkpoints to")
        assert "nothing was started" in err and not any(parent.iterdir())
    finally:
        parent.chmod(0o755)

    run = tmp_path / "run"
    _train(run, tmp_path)
    before = {p: _digest(p) for p in run.rglob("*") if p.is_file()}
    run.chmod(0o555)
    try:
        code, _, err = _run(["eval", "--run", str(run), "--runs-root", str(tmp_path)], tmp_path,
                            preexec=_without_root_file_access)  # fmt: skip
    finally:
        run.chmod(0o755)
    assert code == 2
    _one_error_line(err, "cannot write evaluation results to")
    assert {p: _digest(p) for p in run.rglob("*") if p.is_file()} == before and not (run / "eval").exists()


# ----------------------------------------------------------------------------------------------- lock
def test_two_processes_never_train_one_run_and_a_stale_lock_is_recognised(tmp_path):
    run = tmp_path / "run"
    _train(run, tmp_path, stop_at=4)
    # a longer budget keeps the first process busy (0.4 s a step) while the second one starts
    first = _spawn(["train", "--resume", str(run), "--set", "train.episodes=40", "--quiet"], tmp_path, slow=True)
    try:
        _wait_for_step(first, 5)
        assert runs_table([run])["status"].tolist() == ["running"]  # its process holds the lock
        before = _digest(run / "checkpoints" / "last.pt")
        code, _, err = _run(["train", "--resume", str(run), "--quiet"], tmp_path)
        assert code == 2
        _one_error_line(err, f"is being trained by another process (pid {first.pid}")
        assert _digest(run / "checkpoints" / "last.pt") == before
    finally:
        first.kill()  # SIGKILL: the lock file stays, with the dead pid in it
        first.communicate(timeout=60)
    assert (run / ".lock").read_text().split()[0] == str(first.pid)
    code, out, err = _run(["train", "--resume", str(run), "--quiet"], tmp_path)
    assert code == 0 and out.startswith("finished: 40/40"), err


# ------------------------------------------------------------------------------ records that were changed
def test_a_checkpoint_with_flipped_bytes_is_refused_everywhere(tmp_path, synthetic_data, capsys):
    run = tmp_path / "run"
    _train(run, tmp_path)
    for name in ("best", "last"):
        path = run / "checkpoints" / f"{name}.pt"
        raw = bytearray(path.read_bytes())
        for i in range(len(raw) // 2, len(raw) // 2 + 300):  # a few hundred bytes, as in the issue
            raw[i] ^= 0xFF
        path.write_bytes(bytes(raw))
    damaged = {p: _digest(p) for p in run.rglob("*") if p.is_file()}

    assert main(["eval", "--run", str(run), "--runs-root", str(tmp_path)]) == 2
    assert "best.pt' fails its integrity check" in capsys.readouterr().err
    assert not (run / "eval").exists()
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert "last.pt' fails its integrity check" in capsys.readouterr().err
    for call in (lambda: load_run(run), lambda: runs_table([run])):
        with pytest.raises(DataError, match=r"fails its integrity check"):
            call()
    assert {p: _digest(p) for p in run.rglob("*") if p.is_file() and p.name != ".lock"} == {
        p: h for p, h in damaged.items() if p.name != ".lock"
    }


@pytest.mark.parametrize(
    ("section", "key", "value", "named"),
    [
        ("train", "lr", 0.01, "train.lr: trained with 0.001, config.yaml says 0.01"),
        ("model", "norm_kwargs", {"eps": 0.001}, "model.norm_kwargs.eps: trained with None, config.yaml says 0.001"),
        ("eval", "n_shot", 5, "eval.n_shot: trained with 1, config.yaml says 5"),
    ],
)
def test_a_hand_edited_config_is_refused_by_eval_resume_compare_and_table(
    tmp_path, synthetic_data, capsys, section, key, value, named
):
    run, other = tmp_path / "run", tmp_path / "other"
    _train(run, tmp_path)
    _train(other, tmp_path, "norm=swbn")
    path = run / "config.yaml"
    cfg = yaml.safe_load(path.read_text())
    cfg[section][key] = value
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    kept = _digest(run / "checkpoints" / "last.pt")

    assert main(["eval", "--run", str(run), "--runs-root", str(tmp_path)]) == 2
    assert named in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--quiet"]) == 2
    assert named in capsys.readouterr().err
    assert main(["compare", "--runs", str(other), str(run), "--runs-root", str(tmp_path)]) == 2
    assert named in capsys.readouterr().err
    with pytest.raises(DataError, match="config.yaml was edited after training"):
        runs_table([run])
    assert _digest(run / "checkpoints" / "last.pt") == kept and not (run / "eval").exists()


def test_resume_allows_a_longer_budget_only_and_records_it(tmp_path, synthetic_data, capsys):
    run = tmp_path / "run"
    _train(run, tmp_path, stop_at=4)
    kept = _digest(run / "checkpoints" / "last.pt")
    for override, named in (
        ("train.lr=0.01", "train.lr: run has 0.001, given 0.01"),
        ("train.n_shot=2", "train.n_shot: run has 1, given 2"),
        ("norm=swbn", "model.norm: run has 'batchnorm', given 'swbn'"),
        ("train.episodes=8", "train.episodes: run has 12, given 8"),
    ):
        assert main(["train", "--resume", str(run), "--set", override, "--quiet"]) == 2
        assert named in capsys.readouterr().err
        assert _digest(run / "checkpoints" / "last.pt") == kept
    assert main(["train", "--resume", str(run), "--set", "train.episodes=16", "--quiet"]) == 0
    assert "finished: 16/16 episodes" in capsys.readouterr().out
    env = json.loads((run / "env.json").read_text())
    assert env["resumes"][-1]["config_changes"] == {"train.episodes": [12, 16]}
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["episodes"] == 16
    assert load_checkpoint(run / "checkpoints" / "last.pt")["config"]["train"]["episodes"] == 16


# ------------------------------------------------------------------------------------- malformed outputs
def test_unreadable_outputs_are_reported_not_skipped(tmp_path, synthetic_data, capsys):
    run = tmp_path / "run"
    _train(run, tmp_path)
    assert main(["eval", "--run", str(run), "--runs-root", str(tmp_path), "--episodes", "3"]) == 0
    capsys.readouterr()
    (summary,) = (run / "eval").glob("*/summary.json")
    text = summary.read_text()
    summary.write_text(text[: len(text) // 2])  # truncated JSON
    with pytest.raises(DataError, match=r"summary.json' is unreadable .*delete its folder and re-run"):
        runs_table([run])
    summary.write_text(text)
    assert runs_table([run])["status"].tolist() == ["finished"]
    metrics = run / "metrics.json"
    metrics.write_bytes(metrics.read_bytes()[:40])
    with pytest.raises(DataError, match=r"metrics.json' .*damaged or edited"):
        runs_table([run])


def test_a_tampered_episode_file_is_refused_by_eval_and_compare(tmp_path, synthetic_data, capsys):
    runs = [tmp_path / "bn", tmp_path / "swbn"]
    _train(runs[0], tmp_path)
    _train(runs[1], tmp_path, "norm=swbn")
    assert main(["compare", "--runs", *map(str, runs), "--runs-root", str(tmp_path), "--episodes", "4"]) == 0
    capsys.readouterr()
    (episode_file,) = (tmp_path / "_episode_sets").glob("*-test-*-n4-*.json")
    data = json.loads(episode_file.read_text())
    first = data["episodes"][0]
    first["query"][0][0], first["support"][0][0] = first["support"][0][0], first["query"][0][0]  # a hand edit
    episode_file.write_text(json.dumps(data))
    scored = {p: _digest(p) for r in runs for p in (r / "eval").rglob("*") if p.is_file()}

    for args in (["eval", "--run", str(runs[0]), "--no-reuse"], ["compare", "--runs", *map(str, runs)]):
        assert main([*args, "--runs-root", str(tmp_path), "--episodes", "4"]) == 2
        line = _one_error_line(capsys.readouterr().err, "fails its integrity check")
        assert str(episode_file) in line and "--n-shot 1 --n-query 2 --seed 1234 --count 4 --save" in line
    assert {p: _digest(p) for r in runs for p in (r / "eval").rglob("*") if p.is_file()} == scored
