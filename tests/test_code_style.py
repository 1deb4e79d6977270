"""The code base stays lint-clean and formatted (ruff, configured in pyproject.toml), so CI catches both."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHECKED = ["fewshot", "episodes", "benchmarks", "scripts", "tests", "run_episode.py"]


def _ruff() -> str:
    exe = Path(sys.executable).with_name("ruff")
    found = str(exe) if exe.is_file() else shutil.which("ruff")
    if found is None:
        pytest.skip("ruff is not installed (pip install -e '.[test]')")
    return found


@pytest.mark.parametrize(
    "args", [["check", "--output-format", "concise"], ["format", "--check"]], ids=["lint", "format"]
)
def test_ruff_is_clean(args):
    result = subprocess.run([_ruff(), *args, *CHECKED], cwd=REPO, capture_output=True, text=True, check=False)
    assert result.returncode == 0, f"ruff {args[0]} found problems:\n{result.stdout}{result.stderr}"
