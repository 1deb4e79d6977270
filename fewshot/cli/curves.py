"""``run_episode.py curves``: training loss and validation accuracy of runs side by side (PNG).

::

    python run_episode.py curves --runs DIR [DIR ...] --out FILE.png [--x minutes|episodes] [--smooth N] [--force]

Reads each run's ``train_log.csv`` (see :mod:`fewshot.reports.curves`); the command line is stored in the PNG's
``Description`` text chunk. An existing ``--out`` is not overwritten unless ``--force`` is given.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "curves",
        help="training loss and validation accuracy of runs against training time or episodes (PNG)",
        description="Plot the training curves of runs side by side, from their train_log.csv.",
    )
    add = parser.add_argument
    add("--runs", nargs="+", required=True, metavar="DIR", help="run directories")
    add("--out", required=True, metavar="FILE.png", help="the PNG to write")
    add("--x", default="minutes", choices=("minutes", "episodes"), help="x axis (default: training minutes)")
    add("--smooth", type=int, default=10, metavar="N", help="rolling mean over N log rows of the loss (default: 10)")
    add("--force", action="store_true", help="overwrite an existing --out file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fewshot.errors import ConfigError
    from fewshot.provenance import command_line
    from fewshot.reports.curves import plot_training_curves

    if Path(args.out).suffix.lower() != ".png":
        raise ConfigError(f"--out writes a PNG image; give a file name ending in .png, got {args.out!r}")
    try:  # the library checks --smooth and refuses to overwrite; report those as usage errors (exit 2)
        path = plot_training_curves(
            args.runs, args.out, x=args.x, smooth=args.smooth, overwrite=args.force, description=command_line()
        )
    except (ValueError, FileExistsError) as exc:
        raise ConfigError(str(exc)) from None
    print(f"wrote {path} ({len(args.runs)} runs)")
    return 0
