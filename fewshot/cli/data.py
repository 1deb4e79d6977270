"""``run_episode.py data``: download datasets and report what is on disk.

Commands::

    python run_episode.py data fetch omniglot [--data-root DIR] [--timeout S]
    python run_episode.py data info [--data-root DIR] [--json] [--verify]

``data info`` asks every registered dataset loader (``episodes.datasets.DATASETS``) for its ``info`` and shows,
per dataset, the data root used and why, the sources found, per protocol and split the number of classes and
images, and the checks the loader makes (miniImageNet: the split CSVs' SHA-256; with ``--verify`` every image
against the data's tree digest, naming each missing, extra or changed file). A dataset that is not on disk is
reported as absent; that is not an error. ``--verify`` exits with 1 when a check fails.
"""

from __future__ import annotations

import argparse
import inspect
import json
import sys
from typing import Any

from episodes.data_root import explain_data_root, resolve_fetch_root
from episodes.datasets import DATASETS, _ensure_registered
from episodes.fetch import FETCHERS
from fewshot.errors import DataError

__all__ = ["register", "dataset_report", "format_report"]


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``data`` command group (``fetch``, ``info``) to the top-level parser."""
    parser = subparsers.add_parser("data", help="download datasets, show what is on disk")
    sub = parser.add_subparsers(dest="data_command", metavar="{fetch,info}")
    sub.required = True

    fetch = sub.add_parser("fetch", help="download a dataset with checksums (resumable)")
    fetch.add_argument("dataset", help=f"dataset to download ({', '.join(sorted(FETCHERS))})")
    fetch.add_argument("--data-root", default=None, help="target data root (default: $FEWSHOT_DATA, else ./data)")
    fetch.add_argument(
        "--timeout", type=float, default=10.0, help="seconds allowed to connect and per read (default 10)"
    )
    fetch.set_defaults(func=run_fetch)

    info = sub.add_parser("info", help="datasets, protocols and splits found, with class and image counts")
    info.add_argument("--data-root", default=None, help="data root (default: $FEWSHOT_DATA, ./data, ../shared/data)")
    info.add_argument("--json", action="store_true", help="print JSON instead of a table")
    info.add_argument(
        "--verify", action="store_true", help="also hash every image file against the published digests (slow)"
    )
    info.set_defaults(func=run_info)


def run_fetch(args: argparse.Namespace) -> int:
    _ensure_registered()
    name = args.dataset.lower()
    if name not in FETCHERS:
        if name in DATASETS:
            raise DataError(
                f"{args.dataset} cannot be downloaded automatically (only {', '.join(sorted(FETCHERS))} can); "
                "see data/README.md for where to get it and the layouts the loader reads"
            )
        DATASETS.canonical(name)  # raises UnknownNameError listing the registered datasets
    if args.timeout <= 0:
        raise DataError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    root = resolve_fetch_root(args.data_root)
    print(f"fetching {name} into {root.path / name} ({root.reason})", file=sys.stderr)
    paths = FETCHERS[name](root.path, timeout=args.timeout, progress=lambda m: print(f"  {m}", file=sys.stderr))
    print(f"{name}: {len(paths)} files verified in {root.path / name}")
    return 0


def dataset_report(data_root: str | None, *, verify: bool = False) -> dict[str, dict[str, Any]]:
    """Per registered dataset: the data root used (path, rule, reason) merged with the loader's ``info``.

    With ``verify``, loaders whose ``info`` takes a ``verify`` flag (miniImageNet) also hash every file.
    """
    _ensure_registered()
    report = {}
    for name in DATASETS.names():
        root = explain_data_root(data_root, name)
        entry: dict[str, Any] = {
            "data_root": str(root.path),
            "data_root_rule": root.rule,
            "data_root_reason": root.reason,
        }
        try:
            loader_info = DATASETS.get(name).info
            extra = {"verify": True} if verify and "verify" in inspect.signature(loader_info).parameters else {}
            info = loader_info(data_root, **extra)  # the loader resolves the root by the same rules
        except DataError as exc:
            info = {"present": False, "reason": str(exc)}
        entry.update(info)
        entry.setdefault("present", True)
        report[name] = entry
    return report


def _split_rows(protocols: dict) -> list[tuple[str, ...]]:
    """Rows (protocol, rotation, split, classes, images, unique images); an unavailable protocol gets one row
    whose third cell is ``"unavailable"`` and whose last cell is the reason."""
    rows = []
    for protocol, value in protocols.items():
        if not isinstance(value, dict):
            continue
        if "error" in value:
            rows.append((protocol, "", "unavailable", "", "", str(value["error"])))
            continue
        rotation = str(value.get("rotation", ""))
        for split, counts in value.get("splits", value).items():
            if isinstance(counts, dict) and "error" in counts and "classes" not in counts:
                rows.append((f"{protocol} {split}", "", "unavailable", "", "", str(counts["error"])))
            elif isinstance(counts, dict) and "classes" in counts:
                rows.append(
                    (
                        protocol,
                        rotation,
                        split,
                        str(counts["classes"]),
                        str(counts.get("images", "")),
                        str(counts.get("unique_images", "")),
                    )
                )
    return rows


def format_report(report: dict[str, dict[str, Any]]) -> str:
    """The ``data info`` table: one block per dataset."""
    lines = []
    skip = ("data_root", "data_root_rule", "data_root_reason", "present", "dataset", "protocols")
    for name, entry in report.items():
        lines.append(f"{name}: data root {entry['data_root']} ({entry['data_root_reason']})")
        if not entry.get("present", True):
            lines.append(f"  absent: {entry.get('reason', 'not found')}")
            lines.append("")
            continue
        for key, value in entry.items():
            if key not in skip:
                text = "; ".join(f"{k} {v}" for k, v in value.items()) if isinstance(value, dict) else value
                lines.append(f"  {key}: {text}")
        layouts = sorted({
            str(counts["layout"]) for value in entry.get("protocols", {}).values() if isinstance(value, dict)
            for counts in value.get("splits", value).values() if isinstance(counts, dict) and counts.get("layout")
        })  # fmt: skip
        if layouts:  # which of the dataset's on-disk formats was read (--json: per split, with those found)
            lines.append(f"  layout: {', '.join(layouts)}")
        rows = _split_rows(entry.get("protocols", {}))
        header = ("protocol", "rotation", "split", "classes", "images", "unique images")
        table = [header, *(r for r in rows if r[2] != "unavailable")]
        widths = [max(len(r[i]) for r in table) for i in range(len(header))]
        fmt = "  " + "  ".join(f"{{:{'<' if i < 3 else '>'}{w}}}" for i, w in enumerate(widths))
        if len(table) > 1:
            lines.append(fmt.format(*header))
        for r in rows:
            lines.append(f"  {r[0]}: unavailable: {r[5]}" if r[2] == "unavailable" else fmt.format(*r))
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def run_info(args: argparse.Namespace) -> int:
    report = dataset_report(args.data_root, verify=args.verify)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=False))
    else:
        sys.stdout.write(format_report(report))
    return 1 if args.verify and _failed_checks(report) else 0


def _failed_checks(report: dict[str, dict[str, Any]]) -> list[str]:
    """``dataset: what`` for each checksum in ``report`` that differs or file that is missing/extra/changed."""
    failed = []
    for name, entry in report.items():
        for split, state in entry.get("csv_sha256", {}).items():
            if state != "ok":
                failed.append(f"{name}: {split}.csv")
        images = entry.get("images_verified", {})
        failed += [f"{name}: images {k}" for k in ("tree_digest", "missing", "extra", "changed") if
                   k in images and (k != "tree_digest" or images[k] != "ok")]  # fmt: skip
    return failed
