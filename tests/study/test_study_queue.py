"""scripts/study_queue.sh: every step names a grid and runs that exist, the queue covers every run of every grid,
it stops when a sweep is stopped (the run saved) but goes on past a sweep with a failed run, and it never trains
the placeholder cells of a grid that still has them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fewshot.config.loader import configs_dir
from fewshot.study.grid import load_grid, plan_runs, select_runs

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "study_queue.sh"


def _queue(*args: str, python: str | None = None, rc: int = 0) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin", "RC": str(rc), "FEWSHOT_DATA": "/nonexistent"}
    if python is not None:
        env["PYTHON"] = python
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, env=env)


def _steps() -> list[tuple[str, list[str]]]:
    out = _queue("--list")
    assert out.returncode == 0, out.stderr
    steps = []
    for line in out.stdout.splitlines():
        grid, patterns = line.removeprefix("[queue] ").split(": ")
        steps.append((grid, patterns.split()))
    return steps


def test_every_step_selects_runs_and_together_they_cover_every_grid(tmp_path):
    steps = _steps()
    assert steps[0] == ("miniimagenet_protonet", ["pre_swbn/seed0", "swbn/seed0"])
    covered: dict[str, set[str]] = {}
    for grid, patterns in steps:
        runs = plan_runs(load_grid(configs_dir() / "study" / f"{grid}.yaml"), tmp_path)
        covered.setdefault(grid, set()).update(r.key for r in select_runs(runs, patterns))  # raises if none match
    for path in sorted((configs_dir() / "study").glob("*.yaml")):
        if path.stem != "quickstart":
            assert covered[path.stem] == {r.key for r in plan_runs(load_grid(path), tmp_path)}, path.stem


@pytest.mark.parametrize(("rc", "calls", "said"), [(130, 1, "stopped during"), (1, 7, "not every run finished")])
def test_a_stopped_sweep_stops_the_queue_a_failed_run_does_not(tmp_path, rc, calls, said):
    log = tmp_path / "calls.txt"
    fake = tmp_path / "python"
    fake.write_text(f'#!/bin/bash\necho "$*" >> {log}\nexit $RC\n')
    fake.chmod(0o755)
    out = _queue(python=str(fake), rc=rc)
    lines = log.read_text().splitlines()
    assert len(lines) == calls and said in out.stdout
    assert out.returncode == (rc if rc == 130 else 0)
    if rc == 1:  # the miniImageNet grid's other layers wait until the Omniglot ranking names them
        assert "miniimagenet_protonet: skipped, its grid still has placeholder cells" in out.stdout
        assert not any(line.endswith("miniimagenet_protonet.yaml --only *") for line in lines)
        assert lines[-1].endswith("miniimagenet_maml.yaml --only *")
    assert lines[0] == (
        "run_episode.py sweep --grid configs/study/miniimagenet_protonet.yaml --only pre_swbn/seed0 --only swbn/seed0"
    )
