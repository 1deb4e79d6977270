"""``run_episode.py list norms|backbones|learners|datasets``: registered names with a one-line description.

The description is the summary (first paragraph) of each registered class's docstring, so it cannot drift from
the code.
"""

from __future__ import annotations

import argparse
import inspect
from collections.abc import Callable

from fewshot.registry import Registry

__all__ = ["KINDS", "register", "registry_for", "describe", "run"]


def _norms() -> Registry:
    from fewshot.norms import NORM_LAYERS

    return NORM_LAYERS


def _backbones() -> Registry:
    from fewshot.backbones import BACKBONES

    return BACKBONES


def _learners() -> Registry:
    from fewshot.learners import LEARNERS

    return LEARNERS


def _datasets() -> Registry:
    from episodes import datasets

    datasets._ensure_registered()  # the dataset modules register on first use
    return datasets.DATASETS


KINDS: dict[str, Callable[[], Registry]] = {
    "norms": _norms,
    "backbones": _backbones,
    "learners": _learners,
    "datasets": _datasets,
}


def registry_for(kind: str) -> Registry:
    """The registry listed by ``list KIND`` (ValueError for an unknown kind)."""
    if kind not in KINDS:
        raise ValueError(f"unknown list kind {kind!r}; expected one of {', '.join(KINDS)}")
    return KINDS[kind]()


def describe(obj: object, width: int = 150) -> str:
    """The summary of ``obj``'s docstring on one line: its first paragraph, without RST double backticks, cut
    to ``width`` characters (``"(no description)"`` when there is no docstring)."""
    doc = inspect.getdoc(obj)
    if not doc or not doc.strip():
        return "(no description)"
    paragraph = " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "")
    return paragraph if len(paragraph) <= width else paragraph[: width - 1].rstrip() + "…"


def run(args: argparse.Namespace) -> int:
    registry = registry_for(args.kind)
    names = registry.names()
    width = max((len(n) for n in names), default=0)
    for name in names:
        print(f"{name:<{width}}  {describe(registry.get(name))}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "list",
        help="list registered norms, backbones, learners or datasets",
        description="Print the registered names of one kind, each with the first line of its docstring.",
    )
    parser.add_argument("kind", choices=list(KINDS), help="what to list")
    parser.set_defaults(func=run)
