"""``run_episode.py predict``: classify your own images with a trained run, from a few labelled examples.

::

    python run_episode.py predict --run RUN --support DIR --query DIR_OR_FILES [...] [--policy P]
                                  [--checkpoint best|last] [--out preds.csv [--force]]

``--support DIR`` holds one sub-folder of images per class; ``--query`` takes image files or folders. Images are
preprocessed exactly as the run's training data (size, grey/RGB, Omniglot's stroke inversion). Prints, and with
``--out`` writes as CSV, one row per query: the file, the predicted class and the probability of every class.
ProtoNet runs take any number of classes; a MAML run adapts on the support set with its test-time inner steps
and needs exactly as many classes as it was trained with.
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]

from fewshot.cli.device_option import add_device_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "predict",
        help="classify your own query images among the classes of a labelled support folder, with a trained run",
        description=__doc__.split("::")[0].strip().splitlines()[0],
    )
    add = parser.add_argument
    add_device_option(parser)
    add("--run", required=True, metavar="RUN", help="run folder (runs/... or an archived results/runs/...)")
    add("--support", required=True, metavar="DIR", help="one sub-folder of labelled images per class")
    add("--query", required=True, nargs="+", metavar="DIR_OR_FILE", help="query image files or folders")
    add(
        "--policy",
        default=None,
        choices=("running", "support", "transductive"),
        help="test-time norm statistics (default: the run's eval policy)",
    )
    add("--checkpoint", default="best", choices=("best", "last"), help="weights to use (default: best)")
    add("--out", default=None, metavar="FILE.csv", help="also write the rows as CSV")
    add("--force", action="store_true", help="let --out replace an existing file")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from episodes.cache import atomic_write_bytes
    from fewshot.errors import ConfigError
    from fewshot.inference import load_run, predict

    if args.out is not None and Path(args.out).exists() and not args.force:
        raise ConfigError(f"refusing to overwrite {args.out!r} (--out); pass --force or choose another file")
    predictions = predict(load_run(args.run, args.checkpoint), args.support, args.query, policy=args.policy)
    frame = predictions.to_frame()
    print(frame.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"# {len(frame)} queries, {len(predictions.classes)} classes, policy {predictions.policy}")
    if args.out is not None:
        atomic_write_bytes(Path(args.out), frame.to_csv(index=False).encode("utf-8"))
        print(f"# wrote {args.out}")
    return 0
