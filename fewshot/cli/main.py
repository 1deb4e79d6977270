"""Argument parsing and dispatch for ``run_episode.py``.

Each command module exposes ``register(subparsers)``, which adds its parser and sets ``func`` (a callable
taking the parsed namespace and returning an exit code). Errors end in one line on stderr, never a traceback:
a :class:`~fewshot.errors.FewshotError` exits with 2, any other ``OSError`` with 1 (a closed output pipe, e.g.
``| head``, with its own message), Ctrl-C or SIGTERM with 130.
Modules are imported lazily by name so that a broken optional module does not break unrelated commands, and so
that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import io
import os
import sys
from collections.abc import Sequence

from fewshot.errors import FewshotError

__all__ = ["main", "build_parser"]

# (module under fewshot.cli) — each registers one or more subcommands.
COMMAND_MODULES = (
    "data",  # data fetch | data info
    "episodes_cmd",  # episodes
    "listing",  # list norms|backbones|learners|datasets
    "bench",  # bench norms | bench episodes | bench train
    "train",  # train
    "evaluate",  # eval
    "compare",  # compare
    "table",  # table
    "curves",  # curves (training loss / validation accuracy PNG)
    "study",  # study (the Quick start main job)
    "predict",  # predict (classify your own images with a trained run)
    "embed",  # embed (backbone features of your own images)
    "export",  # export (the backbone as a torch.export program)
    "sweep",  # sweep [run|status|plan|report] --grid configs/study/<grid>.yaml
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="run_episode.py",
        description="fewshot: N-way K-shot benchmarks for normalization layers (BN, SWBN, whitening).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"fewshot.cli.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"fewshot.cli.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def _silence_stdout() -> None:
    """Point stdout at /dev/null so that the interpreter's final flush into a closed pipe raises nothing."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):  # stdout without a descriptor
        pass


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default: ``sys.argv[1:]``), run the command, return its exit code."""
    from fewshot.provenance import record_command

    parser = build_parser()
    args = parser.parse_args(argv)
    record_command(["run_episode.py", *(sys.argv[1:] if argv is None else argv)])
    try:
        from fewshot.device import choose_device

        choose_device(getattr(args, "device", None))  # --device, resolved before any work (DeviceError: exit 2)
        return int(args.func(args) or 0)
    except FewshotError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # whoever read the output stopped reading (``| head``): not a storage problem
        _silence_stdout()
        print(
            "error: the output pipe was closed before the command finished (e.g. `| head`); it stopped there, so "
            "files it had still to write may be missing: run it again without the pipe",
            file=sys.stderr,
        )
        return 1
    except OSError as exc:  # the operating system refused: disk full, read-only folder, permissions, quota
        where = f" ({exc.filename})" if exc.filename else ""
        print(
            f"error: {exc.strerror or exc}{where}; free space, fix the folder's permissions or choose another "
            "location, then run the command again",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
