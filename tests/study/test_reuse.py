"""A grid cell's ``reuse: {SEED: FOLDER}``: a finished run of exactly the cell's config becomes the cell's run (no
training, evaluated by the grid); any other run is refused with the reason, and the source is never changed."""

import json

import pytest
import yaml

from fewshot.errors import ConfigError, DataError
from fewshot.study.grid import load_grid, plan_runs
from fewshot.study.plan import estimate, measure
from fewshot.study.reuse import reuse_run
from fewshot.study.status import run_status
from fewshot.study.sweep import run_sweep
from fewshot.training.run_dir import run_lock

pytest.importorskip("fewshot.learners")


def _quiet(_):
    return None


@pytest.fixture
def source(write_grid, toy_root):
    """A finished 8-episode BN run trained by a one-cell grid ("made outside" the grid that reuses it)."""
    grid = load_grid(write_grid(toy_root, name="made", norms=("batchnorm",), seeds=(0,)))
    runs = plan_runs(grid)
    run_sweep(grid, runs, evaluate=False, log=_quiet)
    return runs[0].run_dir


def _reusing_grid(write_grid, toy_root, folder, name="main", **kwargs):
    path = write_grid(toy_root, name=name, norms=("batchnorm",), seeds=(0,), **kwargs)
    text = path.read_text().replace("seeds: [0]}", f"seeds: [0], reuse: {{0: {folder}}}}}")
    path.write_text(text)
    return load_grid(path)


def _files(folder):
    return {p.relative_to(folder): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_a_finished_run_of_the_cells_config_is_reused_evaluated_and_left_unchanged(write_grid, toy_root, source):
    before = _files(source)
    grid = _reusing_grid(write_grid, toy_root, source)
    runs = plan_runs(grid)
    assert runs[0].reuse_from == source and run_status(runs[0]).note == f"reuses the finished run {source}"
    (cost,) = estimate([run_status(runs[0])], measure([]))
    assert (cost.episodes_left, cost.train_minutes, cost.source) == (0, 0.0, "reused run")

    lines = []
    outcome = run_sweep(grid, runs, log=lines.append)
    assert outcome.reused == ("batchnorm/seed0",) and outcome.trained == () and outcome.failed == ()
    assert outcome.evaluated == ("batchnorm/seed0",)
    assert any("reused the finished run" in line for line in lines)
    target = runs[0].run_dir
    status = run_status(runs[0])
    assert (status.state, status.episodes_done, status.evals_done) == ("finished", 8, 4)
    assert status.note == f"reused from {source}"
    assert (target / "checkpoints" / "best.pt").read_bytes() == (source / "checkpoints" / "best.pt").read_bytes()
    assert (target / "env.json").read_bytes() == (source / "env.json").read_bytes()  # the original command
    record = json.loads((target / "reused_from.json").read_text())
    assert record["source"] == str(source) and record["source_name"] == "made_batchnorm"
    assert len(record["best_sha256"]) == 64 and not list(target.parent.glob("*.reusing"))
    assert _files(source) == before  # nothing written into the source

    again = run_sweep(grid, runs, log=_quiet)  # finished now: skipped, never reused twice
    assert again.skipped == ("batchnorm/seed0",) and again.reused == ()


def test_a_run_of_another_budget_or_config_is_refused_naming_why(write_grid, toy_root, source):
    longer = _reusing_grid(write_grid, toy_root, source, name="longer", episodes=12)
    with pytest.raises(ConfigError, match="finished at 8 training episodes; the cell needs a finished run of exactly"):
        run_sweep(longer, plan_runs(longer), log=_quiet)
    other = _reusing_grid(write_grid, toy_root, source, name="other", spectrum_every=4, extra="")
    text = other.path.read_text().replace('"train.threads=1"', '"train.threads=1", "train.lr=0.01"')
    other.path.write_text(text)
    other = load_grid(other.path)
    with pytest.raises(ConfigError, match=r"another config than the cell's \(train\.lr: run 0\.001, cell 0\.01\)"):
        run_sweep(other, plan_runs(other), log=_quiet)
    assert not (toy_root / "runs" / "sweeps" / "other" / "batchnorm" / "seed0").exists()


def test_an_edited_source_is_not_trusted(write_grid, toy_root, source):
    cfg = yaml.safe_load((source / "config.yaml").read_text())
    cfg["train"]["n_query"] = 3
    (source / "config.yaml").write_text(yaml.safe_dump(cfg))
    grid = _reusing_grid(write_grid, toy_root, source)
    runs = plan_runs(grid)
    lines = []
    outcome = run_sweep(grid, runs, log=lines.append)  # a damaged run fails alone; the sweep goes on
    assert outcome.failed == ("batchnorm/seed0",) and outcome.reused == ()
    assert "DataError" in lines[-1] and "config.yaml was edited after training" in lines[-1]
    assert not runs[0].run_dir.exists() and run_status(runs[0]).state == "todo"
    with pytest.raises(DataError, match="n_query: trained with 2, config.yaml says 3"):
        reuse_run(runs[0])


@pytest.mark.parametrize(
    ("cell", "match"),
    [
        ("{name: a, reuse: {3: runs/x}}", r"reuse maps a seed of the cell \(\[0\]\) to a run folder"),
        ("{name: a, reuse: [runs/x]}", "reuse must map seeds to run folders"),
        ("{name: a}\n  - {name: b, after: a, reuse: {0: runs/x}}", "a second stage .* cannot reuse a run"),
    ],
)
def test_bad_reuse_entries_are_config_errors(tmp_path, cell, match):
    path = tmp_path / "g.yaml"
    path.write_text(f"config: protonet/omniglot_vinyals_1shot.yaml\ncells:\n  - {cell}\n")
    with pytest.raises(ConfigError, match=match):
        load_grid(path)


def test_a_source_held_by_a_live_process_is_refused_and_a_folder_trained_here_is_noted(write_grid, toy_root, source):
    grid = _reusing_grid(write_grid, toy_root, source)
    runs = plan_runs(grid)
    with run_lock(source), pytest.raises(ConfigError, match="is held by a live process"):
        reuse_run(runs[0])
    assert not runs[0].run_dir.exists()
    plain = load_grid(write_grid(toy_root, name="main", norms=("batchnorm",), seeds=(0,)))  # same folder, no reuse
    run_sweep(plain, plan_runs(plain), evaluate=False, log=_quiet)
    note = run_status(plan_runs(grid)[0]).note
    assert note.startswith("trained here, not reused: the cell's reuse") and str(source) in note
