"""What every benchmark's CSV under ``results/`` shares: the environment line, the layout, the atomic write.

A results CSV is ``# command: <the exact command>``, ``# <environment>``, then a header and one row per
measurement (``pandas.read_csv(path, comment="#")`` reads it). Files are written atomically and never replaced
unless the caller passes ``force``.
"""

from __future__ import annotations

import csv
import datetime
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any

import torch

__all__ = ["environment", "rows_to_csv", "write_result"]


def environment() -> dict[str, str]:
    """What the numbers depend on: torch version, threads, date, load average, malloc tunables."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "load_average": f"{load:.2f}",
        "glibc_tunables": "set" if os.environ.get("GLIBC_TUNABLES") else "unset",
    }


def rows_to_csv(
    rows: Sequence[Any], row_type: type, env: Mapping[str, str], command: str, formats: Mapping[str, str] = {}
) -> str:
    """CSV text of dataclass ``rows`` (of ``row_type``) under the command and environment comment lines.

    ``formats`` maps a field to a format spec applied to its values (e.g. ``{"ms": ".4g"}``).
    """
    buf = io.StringIO()
    buf.write(f"# command: {command}\n")
    buf.write("# " + ", ".join(f"{k} {v}" for k, v in env.items()) + "\n")
    writer = csv.DictWriter(buf, fieldnames=[f.name for f in fields(row_type)], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        d = asdict(r)
        for key, spec in formats.items():
            d[key] = format(d[key], spec)
        writer.writerow(d)
    return buf.getvalue()


def write_result(path: str | Path, text: str, force: bool = False) -> Path:
    """Write ``text`` to ``path`` atomically; an existing file is replaced only with ``force``."""
    from episodes.cache import atomic_write_bytes

    path = Path(path)
    if path.exists() and not force:
        raise FileExistsError(f"{path} already exists; pass --force to replace it, or --out to write elsewhere")
    atomic_write_bytes(path, text.encode())
    return path
