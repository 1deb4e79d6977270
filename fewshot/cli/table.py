"""``run_episode.py table``: a results table of runs (Markdown, CSV or LaTeX) and an accuracy-vs-shots plot.

::

    python run_episode.py table --runs DIR [DIR ...] --format md|csv|latex [--published] [--plot FILE.png]
                                [--out FILE] [--force]

One row per evaluation of each run (a run not yet evaluated gets a row with empty accuracy cells). A DIR that
is not itself a run stands for the runs below it. Columns are documented in :mod:`fewshot.reports.table`;
accuracies are in percent (mean of per-episode accuracies ± 95% CI half-width). The README's tables are
generated with this command (never edited by hand). Existing ``--out``/``--plot`` files are not overwritten
unless ``--force`` is given. ``--published`` adds the papers' Conv-4 BatchNorm accuracies
(:mod:`fewshot.reports.published`); a CSV written with ``--out`` starts with a ``# command:`` line.
"""

from __future__ import annotations

import argparse
from pathlib import Path

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "table",
        help="results table of runs (md, csv, latex) and an accuracy-vs-shots plot",
        description="Tabulate evaluated runs; accuracies in percent, mean ± 95% CI half-width.",
    )
    add = parser.add_argument
    add("--runs", nargs="+", required=True, metavar="DIR", help="run directories (or folders holding runs)")
    add("--format", default="md", choices=("md", "csv", "latex"), help="output format (default: md)")
    add("--out", default=None, metavar="FILE", help="write the table to FILE instead of printing it")
    add("--plot", default=None, metavar="FILE.png", help="also write a PNG of accuracy vs shots per norm layer")
    add("--force", action="store_true", help="overwrite existing --out / --plot files")
    add(
        "--published", action="store_true",
        help="add the papers' Conv-4 BatchNorm accuracy for the same learner/dataset/way/shot (published_bn column)",
    )  # fmt: skip
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fewshot.errors import ConfigError
    from fewshot.evaluation.outputs import atomic_write_text
    from fewshot.reports.table import find_runs, format_table, runs_table

    for flag, value in (("--out", args.out), ("--plot", args.plot)):
        if value is not None and Path(value).exists() and not args.force:
            raise ConfigError(f"refusing to overwrite {value!r} ({flag}); pass --force or choose another file")
    if args.plot is not None and Path(args.plot).suffix.lower() != ".png":
        raise ConfigError(f"--plot writes a PNG image; give a file name ending in .png, got {args.plot!r}")
    frame = runs_table(find_runs(args.runs))
    if args.published:
        from fewshot.reports.published import add_published

        frame = add_published(frame)
    text = format_table(frame, args.format)
    if args.out is None:
        print(text, end="")
    else:
        if args.format == "csv":  # the file says which command made it (results/ convention)
            from fewshot.provenance import command_line

            text = f"# command: {command_line()}\n{text}"
        atomic_write_text(Path(args.out), text)
        print(f"wrote {args.out} ({len(frame)} rows)")
    if args.plot is not None:
        from fewshot.reports.plot import plot_accuracy_vs_shots

        plot_accuracy_vs_shots(frame, args.plot, overwrite=args.force)
        print(f"wrote {args.plot}")
    return 0
