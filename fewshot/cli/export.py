"""``run_episode.py export``: a trained run's backbone as a ``torch.export`` program, loadable without fewshot.

::

    python run_episode.py export --run RUN --out FILE.pt2 [--checkpoint best|last] [--force]

Load it anywhere with torch alone: ``torch.export.load("FILE.pt2").module()(x)``, ``x`` float32 ``(N, C, H, W)``
in [0, 1] preprocessed as the run's training data (the file's ``fewshot.json`` says how); the output is the
``(N, D)`` features, computed with the running norm statistics of training.
"""

from __future__ import annotations

import argparse

__all__ = ["register", "run"]


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "export",
        help="write a run's backbone as a torch.export program (.pt2) that loads without this project",
        description=__doc__.split("::")[0].strip().splitlines()[0],
    )
    add = parser.add_argument
    add("--run", required=True, metavar="RUN", help="run folder (runs/... or an archived results/runs/...)")
    add("--out", required=True, metavar="FILE.pt2", help="the program file to write")
    add("--checkpoint", default="best", choices=("best", "last"), help="weights to export (default: best)")
    add("--force", action="store_true", help="replace an existing --out")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from fewshot.inference import export_backbone, load_run

    meta = export_backbone(load_run(args.run, args.checkpoint, device="cpu"), args.out, force=args.force)
    c, h, w = meta["input_shape"]
    print(f"wrote {args.out}: (N, {c}, {h}, {w}) float32 in [0, 1] -> (N, {meta['features']}) features")
    print(f"preprocessing ({meta['dataset']}): {json.dumps(meta['preprocessing'])}")
    print(f'load it with torch alone: torch.export.load("{args.out}").module()(x)')
    return 0
