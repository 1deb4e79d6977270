"""README.md: a reference of at most 25 KB that starts with its Contents, whose Python example runs as written and
whose every shell command runs as written.

Rule for the shell commands (every line of every ``bash`` block; ``\\`` continuations joined, ``#`` comments cut):

* a synopsis line (a placeholder: ``RUN``, ``DIR``, ``FILE...``, ``<...>``, ``[...]`` or ``a|b``) runs as
  ``python run_episode.py <command> --help`` (or ``python scripts/<script> --help``): the command must exist;
* an expensive command (``train``, ``study``, ``bench``, ``eval``, ``compare``, ``table``, ``curves``, ``data
  fetch``, ``predict``, ``embed``, ``export``) is parsed by the real argument parser, and ``train`` additionally
  loads and validates its config with every ``--set`` (what fails before any training would);
* every other command runs as written (``list``, ``data info``, ``episodes``, ``render_results.py --check``);
* ``bash scripts/<x>.sh`` must exist, and ``.ci/run`` must call ``bash scripts/test.sh``;
* ``torchrun [options] run_episode.py ...`` is checked as ``python run_episode.py ...`` (what each rank runs).
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from fewshot.cli.main import build_parser, main

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
EXPENSIVE = {"train", "study", "bench", "eval", "compare", "table", "curves", "predict", "embed", "export", "fetch"}
PLACEHOLDER = re.compile(r"[<>\[\]|]|\.\.\.|\b[A-Z][A-Z_]+(?:\.[a-z0-9]+)?\b")


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", README.read_text(), flags=re.S)


def shell_commands() -> list[str]:
    commands = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line:
                commands.append(line)
    return commands


def test_size_and_contents_first() -> None:
    text = README.read_text()
    assert len(text.encode()) <= 25 * 1024
    sections = re.findall(r"^## (.+)$", text, flags=re.M)
    assert sections[:3] == ["Contents", "Quick start", "Results"]
    assert [s for s in sections if s in ("Command line", "Python API", "Data and protocols", "Development")] == [
        "Command line", "Python API", "Data and protocols", "Development"
    ]  # fmt: skip
    assert (
        "(docs/results.md)" in text and (ROOT / "docs" / "results.md").is_file() and (ROOT / "CHANGELOG.md").is_file()
    )


def test_the_python_example_runs_as_written(toy, own_images, tmp_path, monkeypatch, capsys) -> None:
    [example] = blocks("python")
    assert len(example.strip().splitlines()) <= 10
    shutil.copytree(toy["protonet"], tmp_path / "runs" / "demo")
    monkeypatch.chdir(tmp_path)  # own_images made support/ and query/ here
    exec(compile(example, "README.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[1] for line in out[:4]] == ["a", "b", "c", "b"]  # file, predicted class, probability
    assert (
        out[-1] == "(6, 8) ('a', 'a')" and (tmp_path / "preds.csv").is_file() and (tmp_path / "backbone.pt2").is_file()
    )


@pytest.mark.parametrize("command", shell_commands())
def test_every_shell_command_runs_as_written(command, tmp_path, capsys) -> None:
    argv = shlex.split(command)
    if argv[0] == "torchrun":  # every rank runs the command after torchrun's own options
        assert "run_episode.py" in argv, command
        argv = ["python", *argv[argv.index("run_episode.py") :]]
        command = shlex.join(argv)
    if argv[0] == "bash":
        assert (ROOT / argv[1]).is_file()
        assert "bash scripts/test.sh" in (ROOT / ".ci" / "run").read_text()
        return
    assert argv[0] == "python", command
    synopsis = PLACEHOLDER.search(command.split(" ", 2)[-1]) is not None
    if argv[1].startswith("scripts/"):
        args = ["--help"] if synopsis else argv[2:]
        done = subprocess.run([sys.executable, argv[1], *args], cwd=ROOT, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        return
    assert argv[1] == "run_episode.py", command
    if synopsis:
        with pytest.raises(SystemExit) as exit_info:
            main([argv[2], "--help"])
        assert exit_info.value.code == 0
        return
    if EXPENSIVE & set(argv[2:4]):
        args = build_parser().parse_args(argv[2:])
        if argv[2] == "train":
            from fewshot.config import load_config

            load_config(ROOT / args.config if args.config else None, args.overrides)
        return
    assert main(argv[2:]) == 0, capsys.readouterr().err
