"""Shipped checkpoints: ``scripts/archive_run.py`` copies a run's evaluated weights (<= 1 MiB) into
``results/runs/``, where eval, predict, embed and export work at once, and a committed number is re-derived in
seconds from the checkpoint on its first few test episodes.

:func:`rederive` is checked on a run trained and archived here, and on every checkpoint committed under
``results/`` (it finds them itself: committing ``results/runs/<name>/<run>/checkpoints/best.pt`` adds the run's
evaluations to this test; they are skipped where the dataset is absent).
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fewshot
from fewshot.cli.main import main
from fewshot.errors import DataError
from fewshot.evaluation.evaluate import evaluate_episodes
from fewshot.evaluation.outputs import file_sha256, read_summary
from fewshot.training.build import build_split
from fewshot.training.episode_sets import get_episode_set

ROOT = Path(__file__).resolve().parents[2]
FEW = 3  # episodes re-derived per evaluation
_SPLITS: dict[tuple[str, str], object] = {}  # the splits rederive() built, by (data config, split name)


def _archive_module():
    spec = importlib.util.spec_from_file_location("archive_run", ROOT / "scripts" / "archive_run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rederive(eval_folder: Path, runs_root: Path, n: int = FEW) -> tuple[np.ndarray, np.ndarray]:
    """``(committed, recomputed)`` correct-query counts of the first ``n`` episodes of an archived evaluation.

    The episodes are regenerated from the data (their content hash must equal the summary's) and scored by the
    shipped checkpoint (its sha256 must equal the summary's), exactly as ``eval`` scored them.
    """
    summary = read_summary(eval_folder)
    run = fewshot.load_run(eval_folder.parent.parent, summary.get("checkpoint", "best"))
    assert file_sha256(run.checkpoint) == summary["checkpoint_sha256"], (
        "the shipped checkpoint is not the evaluated one"
    )
    key = (repr(run.cfg.data), summary["split"])
    if key not in _SPLITS:  # one decode per dataset split for all committed evaluations (miniImageNet: seconds)
        _SPLITS[key] = build_split(run.cfg, summary["split"])
    split = _SPLITS[key]
    eset = get_episode_set(
        split, summary["way"], summary["shot"], summary["query"], seed=summary["seed"], count=summary["n"],
        within_alphabet=summary["within_alphabet"], root=runs_root,
    )  # fmt: skip
    assert eset.content_hash == summary["episode_hash"], "the regenerated episodes differ from the evaluated ones"
    result = evaluate_episodes(run.learner, [eset.episodes[i] for i in range(n)], policy=summary["policy"])
    committed = pd.read_csv(eval_folder / "episodes.csv").sort_values("position")["n_correct"].to_numpy()[:n]
    return committed, result.n_correct


def test_archive_ships_the_evaluated_weights_and_everything_works_on_the_archive(toy, tmp_path, capsys) -> None:
    runs_root = toy["root"] / "runs"
    assert main(["eval", "--run", str(toy["protonet"]), "--runs-root", str(runs_root)]) == 0
    capsys.readouterr()
    archive = _archive_module()
    dest = archive.archive(toy["protonet"], tmp_path / "results" / "runs")
    assert dest == tmp_path / "results" / "runs" / "runs" / "protonet"
    shipped = dest / "checkpoints" / "best.pt"
    assert sorted(p.name for p in (dest / "checkpoints").iterdir()) == ["best.pt"]  # never last.pt
    assert shipped.read_bytes() == (toy["protonet"] / "checkpoints" / "best.pt").read_bytes()
    [folder] = (dest / "eval").iterdir()
    # eval on the archive: the committed evaluation is found and reused (same episodes, policy, checkpoint)
    assert main(["eval", "--run", str(dest), "--runs-root", str(runs_root), "--json"]) == 0
    assert '"reused": true' in capsys.readouterr().out
    # ... and re-derived from the shipped weights
    committed, recomputed = rederive(folder, runs_root)
    np.testing.assert_array_equal(recomputed, committed)
    assert fewshot.load_run(dest).checkpoint == shipped


def test_archive_does_not_ship_large_checkpoints(toy, tmp_path, capsys, monkeypatch) -> None:
    archive = _archive_module()
    monkeypatch.setattr(archive, "MAX_CHECKPOINT_BYTES", 1000)
    dest = archive.archive(toy["maml"], tmp_path)
    assert not (dest / "checkpoints").exists() and (dest / "config.yaml").is_file()
    assert f"not copied: {toy['maml'] / 'checkpoints' / 'best.pt'} is " in capsys.readouterr().err
    with pytest.raises(DataError, match="checkpoint"):
        fewshot.load_run(dest)


def test_gitignore_lets_results_checkpoints_in_and_keeps_others_out() -> None:
    import subprocess

    def ignored(path: str) -> bool:
        return subprocess.run(["git", "check-ignore", "-q", path], cwd=ROOT).returncode == 0

    assert not ignored("results/runs/protonet_x/20260101T000000Z-abc/checkpoints/best.pt")
    assert ignored("runs/protonet_x/20260101T000000Z-abc/checkpoints/best.pt") and ignored("model.pt")


def _committed_evaluations() -> list[Path]:
    folders = []
    for ckpt in sorted((ROOT / "results").glob("**/checkpoints/*.pt")):
        if (ROOT / "results" / "inflight") in ckpt.parents:
            continue  # runs parked between sessions (scripts/park_runs.sh), not shipped results
        sha = hashlib.sha256(ckpt.read_bytes()).hexdigest()
        run = ckpt.parent.parent
        for summary in sorted(run.glob("eval/*/summary.json")):
            if f'"checkpoint_sha256": "{sha}"' in summary.read_text():
                folders.append(summary.parent)
    return folders


@pytest.fixture(scope="module")
def episode_sets_root(tmp_path_factory) -> Path:
    """One episode-set folder for the module: the policies of one (way, shot) share their regenerated episodes."""
    return tmp_path_factory.mktemp("runs")


@pytest.mark.parametrize("folder", _committed_evaluations(), ids=lambda p: f"{p.parent.parent.name}/{p.name}")
def test_committed_numbers_rederive_from_shipped_checkpoints(folder, episode_sets_root) -> None:
    try:
        committed, recomputed = rederive(folder, episode_sets_root)
    except DataError as exc:
        pytest.skip(f"dataset not available: {exc}")
    np.testing.assert_array_equal(recomputed, committed)


def test_archive_refuses_a_run_a_live_process_holds(tmp_path) -> None:
    from fewshot.training.run_dir import run_lock

    run = tmp_path / "runs" / "sweeps" / "grid" / "bn" / "seed0"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("learner: protonet\n")
    dest_root = tmp_path / "results" / "study" / "sweeps" / "grid"
    with run_lock(run), pytest.raises(SystemExit, match="is in use .*archive it when that has finished"):
        _archive_module().archive(run, dest_root)
    assert not dest_root.exists()
    assert _archive_module().archive(run, dest_root) == dest_root / "bn" / "seed0"  # released: archived


def test_archive_copies_a_study_runs_backbone_record_and_diagnostics(tmp_path) -> None:
    run = tmp_path / "runs" / "sweeps" / "grid" / "swbn" / "seed0"
    for name, text in {
        "config.yaml": "learner: protonet\n",
        "init_from.json": '{"sha256": "ab"}\n',
        "diagnostics/whiteness.csv": "layer,whiteness\nnorm1,0.5\n",
        "diagnostics/spectrum.csv": "episode,layer,sigma_max\n0,norm1,1.0\n",
        "w_spectrum.csv": "episode,layer,sigma_max\n500,norm1,1.2\n",
        "eval/k-running/summary.json": "{}\n",
        "checkpoints/last.pt": "state",
    }.items():
        (run / name).parent.mkdir(parents=True, exist_ok=True)
        (run / name).write_text(text)
    dest = _archive_module().archive(run, tmp_path / "results" / "study" / "sweeps" / "grid")
    assert dest == tmp_path / "results" / "study" / "sweeps" / "grid" / "swbn" / "seed0"
    copied = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert copied == [
        "config.yaml", "diagnostics/spectrum.csv", "diagnostics/whiteness.csv", "eval/k-running/summary.json",
        "init_from.json", "w_spectrum.csv",
    ]  # fmt: skip
    assert (dest / "diagnostics" / "whiteness.csv").read_text() == "layer,whiteness\nnorm1,0.5\n"
