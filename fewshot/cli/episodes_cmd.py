"""``run_episode.py episodes``: show the episodes a sampler draws, or save them as a fixed evaluation file.

Command::

    python run_episode.py episodes --dataset omniglot --protocol vinyals --split test \\
        --n-way 5 --n-shot 1 --n-query 15 --seed 0 --count 3 [--within-alphabet] [--json] \\
        [--save FILE [--force]] [--data-root DIR] [--option KEY=VALUE ...]

Episode ``i`` is episode ``i`` of ``EpisodeSampler(split, n_way, n_shot, n_query, seed=seed)``, so what this
prints is exactly what training or evaluation with that seed sees. ``--json`` prints a list of episodes
(index, class ids, rotation per class, support and query image ids in row order); the default is a compact
summary. ``--save FILE`` writes a fixed-episode file (:mod:`episodes.fixed`) and prints its content hash.
``--option`` passes dataset options to the loader (``--option image_size=84 --option mode=L``); values are
read as JSON when they parse (numbers, booleans, lists), else as strings.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from episodes.datasets import get_dataset, load_split
from episodes.fixed import FixedEpisodes, make_fixed_episodes
from episodes.split import ClassSplit
from fewshot.errors import ConfigError
from fewshot.registry import accepted_options

__all__ = ["register", "run", "parse_options", "check_options", "format_episodes"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``episodes`` command to the top-level parser."""
    p = subparsers.add_parser(
        "episodes",
        help="show sampled episodes (classes and image ids), or save them as a fixed evaluation file",
        description="Show the episodes EpisodeSampler draws for a seed, or save them as a fixed episode file.",
    )
    p.add_argument("--dataset", default="omniglot", help="registered dataset (default omniglot)")
    p.add_argument("--protocol", default=None, help="protocol (default: the dataset's first, e.g. vinyals)")
    p.add_argument("--split", default="test", help="split (default test)")
    p.add_argument("--n-way", type=int, default=5, help="classes per episode (default 5)")
    p.add_argument("--n-shot", type=int, default=1, help="support images per class (default 1)")
    p.add_argument("--n-query", type=int, default=15, help="query images per class (default 15)")
    p.add_argument("--seed", type=int, default=0, help="sampler seed (default 0)")
    p.add_argument("--count", type=int, default=3, help="number of episodes, 0..count-1 (default 3)")
    p.add_argument("--within-alphabet", action="store_true", help="draw each episode's classes from one group")
    p.add_argument("--json", action="store_true", help="print the episodes as JSON")
    p.add_argument("--save", metavar="FILE", default=None, help="write a fixed episode file and print its hash")
    p.add_argument("--force", action="store_true", help="with --save: overwrite an existing different file")
    p.add_argument("--data-root", default=None, help="data root (default: $FEWSHOT_DATA, ./data, ../shared/data)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE", help="dataset option, repeatable")
    p.set_defaults(func=run)


def parse_options(items: list[str]) -> dict[str, Any]:
    """``["image_size=84", "mode=L"]`` -> ``{"image_size": 84, "mode": "L"}`` (JSON values where they parse)."""
    options: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option expects KEY=VALUE, got {item!r}; e.g. --option image_size=84")
        try:
            options[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            options[key.strip()] = value
    return options


def check_options(dataset: str, options: dict[str, Any]) -> None:
    """Raise ConfigError if the dataset's loader takes no keyword argument named like an option."""
    accepted, takes_any = accepted_options(get_dataset(dataset).load, exclude=("protocol", "split", "data_root"))
    if takes_any:
        return
    for key in options:
        if key not in accepted:
            raise ConfigError(
                f"dataset {dataset!r} takes no option {key!r}; its options are: {', '.join(accepted) or 'none'}"
            )


def _episode_json(fixed: FixedEpisodes) -> list[dict[str, Any]]:
    return [
        {
            "index": ep.index,
            "class_ids": list(ep.classes),
            "rotation": list(ep.rotation),
            "support_ids": [i for ids in ep.support for i in ids],
            "query_ids": [i for ids in ep.query for i in ids],
        }
        for ep in fixed.episodes
    ]


def _relative(image_id: str, class_name: str) -> str:
    """``image_id`` without the folder prefix it shares with its class (``Latin/character01/0001_03``: ``0001_03``)."""
    prefix = ""
    for part in class_name.split("/")[:-1] if "/" in class_name else [class_name]:
        if image_id.startswith(prefix + part + "/"):
            prefix += part + "/"
        else:
            break
    return image_id[len(prefix) :]


def format_episodes(split: ClassSplit, fixed: FixedEpisodes, shown_query: int = 5) -> str:
    """The text summary: a header line, then per episode one line per class (label order).

    Image ids are shown without the folder prefix they share with their class.
    """
    flags = ", within alphabet" if fixed.within_alphabet else ""
    flags += ", rotation augmentation" if fixed.rotation_augment else ""
    lines = [
        f"{split.dataset}/{split.protocol} split {split.split}: {split.n_classes} classes, {split.images.shape[0]} "
        f"images {tuple(split.image_shape)}; {fixed.n_way}-way {fixed.n_shot}-shot {fixed.n_query}-query, "
        f"seed {fixed.seed}{flags}"
    ]
    width = max(len(name) for ep in fixed.episodes for name in ep.classes)
    for ep in fixed.episodes:
        lines.append(f"episode {ep.index}")
        for label, (name, k, sup, qry) in enumerate(zip(ep.classes, ep.rotation, ep.support, ep.query, strict=True)):
            more = f" ... ({len(qry)})" if len(qry) > shown_query else ""
            support = " ".join(_relative(i, name) for i in sup)
            query = " ".join(_relative(i, name) for i in qry[:shown_query])
            lines.append(f"  {label:>2}  {name:<{width}}  rot {k}  support: {support}  query: {query}{more}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    """Load the split, draw episodes ``0..count-1``, print them (and save them with ``--save``)."""
    if args.count < 1:
        raise ConfigError(f"--count must be a positive number of episodes, got {args.count}")
    if args.force and not args.save:
        raise ConfigError("--force only applies with --save FILE; add --save or drop --force")
    options = parse_options(args.option)
    check_options(args.dataset, options)
    split = load_split(args.dataset, args.protocol, args.split, data_root=args.data_root, **options)
    fixed = make_fixed_episodes(
        split, args.n_way, args.n_shot, args.n_query, seed=args.seed, count=args.count,
        within_alphabet=args.within_alphabet,
    )  # fmt: skip
    if args.json:
        print("[\n" + ",\n".join(json.dumps(ep) for ep in _episode_json(fixed)) + "\n]")  # one episode a line
    else:
        print(format_episodes(split, fixed))
    if args.save:
        path = fixed.save(args.save, overwrite=args.force)
        print(
            f"saved {fixed.count} episodes to {path} (content hash {fixed.content_hash()})",
            file=sys.stderr if args.json else sys.stdout,
        )
    return 0
