"""``run_episode.py embed``: backbone features of your own images, from a trained run.

::

    python run_episode.py embed --run RUN --images DIR_OR_FILE [...] --out FILE.npy|FILE.pt
                                [--policy running|transductive] [--checkpoint best|last] [--force]

Writes the features ``(n_images, D)`` to ``--out`` (numpy ``.npy`` or torch ``.pt``) and their index, one row
per image (``row, file, folder``; folder = the image's sub-folder, e.g. its class), to the same name with
``.csv``. Images are preprocessed exactly as the run's training data.
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]

from fewshot.cli.device_option import add_device_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "embed",
        help="write backbone features of your own images (.npy or .pt) with an index CSV",
        description=__doc__.split("::")[0].strip().splitlines()[0],
    )
    add = parser.add_argument
    add_device_option(parser)
    add("--run", required=True, metavar="RUN", help="run folder (runs/... or an archived results/runs/...)")
    add("--images", required=True, nargs="+", metavar="DIR_OR_FILE", help="image files or folders")
    add("--out", required=True, metavar="FILE", help="features file, .npy or .pt; the index goes to FILE.csv")
    add("--policy", default="running", choices=("running", "transductive"), help="norm statistics (default: running)")
    add("--checkpoint", default="best", choices=("best", "last"), help="weights to use (default: best)")
    add("--force", action="store_true", help="replace existing output files")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from fewshot.inference import embed, load_run

    embeddings = embed(load_run(args.run, args.checkpoint), args.images, policy=args.policy)
    features, index = embeddings.save(args.out, force=args.force)
    n, d = embeddings.features.shape
    print(f"wrote {features} ({n} x {d} float32, policy {embeddings.policy}) and {index}")
    return 0
