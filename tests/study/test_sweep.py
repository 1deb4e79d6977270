"""End to end on a tiny grid (2 layers x 2 seeds x 8 episodes of a synthetic dataset): sweep, interrupt and
resume (bit-exact), skip on re-run, status, locks, plan, and the report (table, pairs, plots, findings)."""

import json
import os
import socket

import numpy as np
import pandas as pd
import pytest
import torch

from fewshot.cli.main import main
from fewshot.evaluation.outputs import read_episode_accuracies
from fewshot.study.findings import findings_markdown
from fewshot.study.grid import load_grid, plan_runs
from fewshot.study.report import collect, study_table
from fewshot.study.status import lock_path, run_status
from fewshot.study.sweep import run_sweep
from fewshot.training.checkpoint import load_checkpoint
from fewshot.training.file_lock import hold_lock

pytest.importorskip("fewshot.learners")


def _weights(run_dir):
    return load_checkpoint(run_dir / "checkpoints" / "best.pt")["model"]


class _StopAt:
    def __init__(self, episode):
        self.episode = episode

    def __call__(self, info):
        if info.episodes_done == self.episode:
            raise KeyboardInterrupt


def test_sweep_resume_skip_status_and_report(write_grid, toy_root, capsys):
    grid_path = write_grid(toy_root)
    grid = load_grid(grid_path)
    runs = plan_runs(grid)
    assert [r.key for r in runs] == ["batchnorm/seed0", "swbn/seed0", "batchnorm/seed1", "swbn/seed1"]
    assert main(["sweep", "status", "--grid", str(grid_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1].split()[:5] == ["1", "batchnorm/seed0", "todo", "0/8", "0.0"]
    assert out[1].endswith(f"python run_episode.py sweep --grid {grid_path} --only batchnorm/seed0")
    assert out[-1].startswith("4 runs: 4 todo")

    # interrupted in its second segment (episodes 4..8): last.pt saved at episode 6, lock released
    with pytest.raises(KeyboardInterrupt):
        run_sweep(grid, runs, callback=_StopAt(6), log=lambda _: None)
    first = run_status(runs[0])
    assert (first.state, first.episodes_done) == ("stopped", 6) and not lock_path(runs[0]).exists()
    assert run_status(runs[1]).state == "todo"

    # the next sweep resumes it and does the rest
    outcome = run_sweep(grid, runs, log=lambda _: None)
    assert outcome.trained == tuple(r.key for r in runs) and outcome.failed == ()
    assert all((s.state, s.episodes_done, s.evals_done) == ("finished", 8, 4) for s in map(run_status, runs))

    # the resumed run equals an uninterrupted one bit for bit (same cell and seed, another grid folder)
    ref_path = write_grid(toy_root, name="ref", norms=("batchnorm",), seeds=(0,))
    ref = plan_runs(load_grid(ref_path))
    run_sweep(load_grid(ref_path), ref, evaluate=False, log=lambda _: None)
    a, b = _weights(runs[0].run_dir), _weights(ref[0].run_dir)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)

    # a re-run skips every finished run and touches nothing
    stamps = {p: p.stat().st_mtime_ns for r in runs for p in r.run_dir.rglob("*") if p.is_file()}
    outcome = run_sweep(grid, runs, log=lambda _: None)
    assert outcome.skipped == tuple(r.key for r in runs) and outcome.trained == outcome.evaluated == ()
    assert stamps == {p: p.stat().st_mtime_ns for r in runs for p in r.run_dir.rglob("*") if p.is_file()}

    # W's spectrum after each 4-episode segment for SWBN (4 layers), nothing for BN
    spectrum = pd.read_csv(runs[1].run_dir / "w_spectrum.csv")
    assert spectrum.groupby("episode").size().to_dict() == {4: 4, 8: 4}
    assert (spectrum["sv_max"] >= spectrum["sv_min"]).all() and (spectrum["buffer"] == "whitening_matrix").all()
    assert not (runs[0].run_dir / "w_spectrum.csv").exists()
    white = pd.read_csv(runs[1].run_dir / "diagnostics" / "whiteness.csv")
    assert len(white) == 2 * 2 * 4  # (K, policy) x layers
    assert white.loc[white["policy"] == "running", "support_cond"].isna().all()
    assert (white.loc[white["policy"] == "support", "cond_dim"] == 16).all()

    # report: table, pairs, diagnostics, plots, findings
    out_dir = toy_root / "results"
    assert main(["sweep", "report", "--grid", str(grid_path), "--out-dir", str(out_dir)]) == 0
    lines = (out_dir / "study.csv").read_text().splitlines()
    assert lines[0] == f"# command: python run_episode.py sweep report --grid {grid_path} --out-dir {out_dir}"
    table = pd.read_csv(out_dir / "study.csv", comment="#")
    for column in ("learner", "backbone", "norm", "dataset", "way", "shot", "train_shot", "policy", "n_seeds",
                   "mean", "ci95", "diff_to_bn", "diff_ci95"):  # fmt: skip
        assert column in table.columns
    assert len(table) == 2 * 2 * 2 and set(table["n_seeds"]) == {2}
    assert table.loc[table["cell"] == "batchnorm", "diff_to_bn"].isna().all()
    row = table[(table["cell"] == "swbn") & (table["shot"] == 1) & (table["policy"] == "support")].iloc[0]
    folders = {}
    for r in runs:
        for summary in (r.run_dir / "eval").glob("*/summary.json"):
            s = json.loads(summary.read_text())
            if (s["shot"], s["policy"]) == (1, "support"):
                folders[r.key] = summary.parent
    acc = {k: read_episode_accuracies(v) for k, v in folders.items()}
    expected_mean = 100 * np.mean([acc["swbn/seed0"].mean(), acc["swbn/seed1"].mean()])
    expected_diff = 100 * np.mean([(acc[f"swbn/seed{s}"] - acc[f"batchnorm/seed{s}"]).mean() for s in (0, 1)])
    assert row["mean"] == pytest.approx(expected_mean, abs=1e-4)
    assert row["diff_to_bn"] == pytest.approx(expected_diff, abs=1e-4) and row["n_paired_seeds"] == 2
    assert row["ci_low"] <= row["mean"] <= row["ci_high"]
    pairs = pd.read_csv(out_dir / "study_pairs.csv", comment="#")
    assert len(pairs) == 2 * 2 * 2 and set(pairs["seed"]) == {0, 1}
    for name in ("study_accuracy_vs_k.png", "study_diff_vs_k.png", "study_w_spectrum.png"):
        assert (out_dir / name).read_bytes()[:4] == b"\x89PNG"
    findings = (out_dir / "FINDINGS.md").read_text()
    answer = "**Answer.** imagefolder protonet (toy), 3-way, `support`, K = 1: `swbn` is"
    assert findings.startswith("# Findings") and answer in findings
    assert len(findings.splitlines()) <= 30 and "](study_diff_vs_k.png)" in findings
    code = main(["sweep", "report", "--grid", str(grid_path), "--out-dir", str(out_dir)])
    assert code == 2 and "refusing to overwrite" in capsys.readouterr().err


def test_locks_running_state_and_plan(write_grid, toy_root, capsys):
    grid_path = write_grid(toy_root, norms=("batchnorm",), seeds=(0,), episodes=4)
    grid = load_grid(grid_path)
    (run,) = plan_runs(grid)
    lock = lock_path(run)
    with hold_lock(lock, str):  # another sweep process holds it (a second open file description: flock conflicts)
        status = run_status(run)
        assert (status.state, status.note) == ("running", f"starting, pid {os.getpid()} on {socket.gethostname()}")
        outcome = run_sweep(grid, [run], log=lambda _: None)
        assert outcome.busy == ("batchnorm/seed0",) and not run.run_dir.exists()
    lock.write_text(f"{2**22 + 12345} {socket.gethostname()} then\n")  # left by a dead process: no flock on it
    assert run_status(run).state == "todo"
    assert main(["sweep", "--grid", str(grid_path), "--until-episodes", "2", "--no-eval"]) == 0
    status = run_status(run)
    assert (status.state, status.episodes_done, status.evals_done) == ("stopped", 2, 0)
    capsys.readouterr()
    assert main(["sweep", "--grid", str(grid_path), "--dry-run"]) == 0
    plan = capsys.readouterr().out.splitlines()
    row = plan[2].split()
    assert row[:3] == ["batchnorm/seed0", "stopped", "2"] and row[4:6] == ["this", "run"]
    seconds = 60 * status.minutes / 2
    assert float(row[3]) == pytest.approx(seconds, abs=1e-3) and float(row[6]) == pytest.approx(
        2 * seconds / 60, abs=0.05
    )


def test_a_second_stage_waits_for_its_first_and_starts_from_its_backbone(write_grid, toy_root):
    stages = (
        "cells:\n"
        "  - {name: pre, set: [learner.name=classifier, 'learner.kwargs={n_classes: 6}'], evaluate: false}\n"
        "  - {name: fine, after: pre}\n"
    )
    grid_path = write_grid(toy_root, norms=(), seeds=(0,), episodes=4, extra="")
    text = grid_path.read_text().replace("cells:\n\n", stages)
    grid_path.write_text(text)
    grid = load_grid(grid_path)
    pre, fine = plan_runs(grid)
    assert (pre.key, fine.key) == ("pre/seed0", "fine/seed0")

    outcome = run_sweep(grid, [fine], log=lambda _: None)  # the first stage has not run: the second waits
    assert outcome.busy == ("fine/seed0",) and not fine.run_dir.exists()
    assert "waits for pre/seed0" in run_status(fine).note

    outcome = run_sweep(grid, [pre, fine], log=lambda _: None)
    assert outcome.trained == ("pre/seed0", "fine/seed0") and outcome.evaluated == ("fine/seed0",)
    assert (run_status(pre).evals_total, run_status(fine).evals_done) == (0, 4)
    record = json.loads((fine.run_dir / "init_from.json").read_text())
    assert record["path"] == str(pre.run_dir / "checkpoints" / "best.pt")
    # the study table reports the first stage's budget beside the evaluated stage's
    frame, references = collect([grid])
    first = run_status(pre)
    assert set(frame["cell"]) == {"fine"} and set(frame["pretrain_episodes"]) == {4}
    assert set(frame["pretrain_minutes"]) == {first.minutes} and first.minutes > 0
    assert set(frame["pretrain_learner"]) == {"classifier"}
    table, _ = study_table(frame, references)
    assert ", after a first stage of 4 classifier batches (" in findings_markdown(table, pd.DataFrame(), [grid], "c")
