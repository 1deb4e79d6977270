"""Provenance of results: the command line that produced a run directory or an evaluation.

Stored in ``env.json`` (training) and in each evaluation's ``summary.json``, so that every number in
``results/`` can be traced back to the exact command that made it.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

__all__ = ["command_line", "record_command"]

_recorded: list[str] | None = None


def record_command(argv: list[str]) -> None:
    """Remember the command being run (the CLI calls this with ``["run_episode.py", *args]``).

    Used instead of ``sys.argv`` by :func:`command_line`, so that an in-process call such as
    ``fewshot.cli.main.main(["eval", ...])`` records its own arguments, not those of the host process.
    """
    global _recorded
    _recorded = [str(a) for a in argv]


def command_line(argv: list[str] | None = None) -> str:
    """The command that started this process as a shell-quoted line, e.g. ``python run_episode.py train --config X``.

    Args:
        argv: the argument vector (default: the one given to :func:`record_command`, else ``sys.argv``); its
            first entry is the script, shown by file name.
    """
    if argv is None:
        argv = _recorded if _recorded is not None else sys.argv
    argv = list(argv)
    script = Path(argv[0]).name if argv and argv[0] else "-c"
    return shlex.join(["python", script, *argv[1:]])
