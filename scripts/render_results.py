#!/usr/bin/env python
"""Regenerate the result tables of README.md and docs/*.md from the CSV files under results/.

A page (README.md, or any docs/*.md such as the full results page docs/results.md) holds marker pairs
``<!-- results:NAME -->`` ... ``<!-- /results:NAME -->``; everything between a pair is
replaced by a Markdown rendering of ``results/NAME.csv``. The opening marker may select rows and columns:
``<!-- results:NAME where <pandas query> columns a,b,c digits 2 -->`` (all parts optional, in that order; ``digits``
prints floats with that many decimals, else 4 significant digits; a p-value column, ``p`` or ``p_*``, always prints
2 significant digits, since fixed decimals would print 6e-4 and 7e-19 alike as 0.00; other floats are not rounded to 0
below a threshold, and ``-0.00`` prints as ``0.00``), e.g.
``<!-- results:bench_norms where section == "step" columns dataset,layer,ms,ratio_to_batchnorm digits 2 -->``.
Lines of the CSV starting with ``#`` are comments (the exact command that produced the file) and are rendered
under the table. A pair ``<!-- include:PATH.md -->`` ... ``<!-- /include:PATH.md -->`` is replaced by the
generated Markdown file ``results/PATH.md`` (e.g. a study's ``FINDINGS.md``): its top heading is dropped (the page
has its own) and its relative links and images are rewritten to point into ``results/`` from the page. No page is
ever edited by hand between markers.

Usage: python scripts/render_results.py [--check]   (--check: exit 1 if a page is out of date, write nothing)
"""

from __future__ import annotations

import argparse
import io
import os
import re
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parent.parent
MARKER = re.compile(
    r"(<!-- results:(?P<name>[\w./-]+)(?: where (?P<where>.+?))?(?: columns (?P<columns>[\w,]+))?"
    r"(?: digits (?P<digits>\d+))? -->\n)"
    r"(?P<body>.*?)(?P<end><!-- /results:(?P=name) -->)",
    re.S,
)
INCLUDE = re.compile(
    r"(<!-- include:(?P<name>[\w./-]+\.md) -->\n)(?P<body>.*?)(?P<end><!-- /include:(?P=name) -->)", re.S
)
_LINK = re.compile(r"(!?\[[^\]]*\]\()(?P<target>[^)\s]+)\)")


def render(name: str, where: str | None = None, columns: str | None = None, digits: int | None = None) -> str:
    path = ROOT / "results" / f"{name}.csv"
    if not path.exists():
        raise FileNotFoundError(
            f"README refers to results/{name}.csv, which does not exist; run the command that makes it"
        )
    text = path.read_text(encoding="utf-8")
    comments = [line[1:].strip() for line in text.splitlines() if line.startswith("#")]
    # Nullable dtypes: an integer column with empty cells (a run without evaluation) stays integer, not float.
    frame = pd.read_csv(io.StringIO(text), comment="#", dtype_backend="numpy_nullable")
    if where:
        frame = frame.query(where)
    if columns:
        missing = [c for c in columns.split(",") if c not in frame.columns]
        if missing:
            raise KeyError(f"results/{name}.csv has no column(s) {missing}; it has {list(frame.columns)}")
        frame = frame[columns.split(",")]
    table = _markdown(frame, digits)
    notes = "".join(f"\n{c}  " for c in comments)
    return f"{table}\n{notes}\n" if notes else f"{table}\n"


def _markdown(frame: pd.DataFrame, digits: int | None = None) -> str:
    """A Markdown table (no optional dependency, so the README does not depend on what is installed)."""

    def fmt(v: object, column: str) -> str:
        if v is None or v is pd.NA or (isinstance(v, float) and pd.isna(v)):
            return ""
        if isinstance(v, float):
            if column == "p" or column.startswith("p_"):
                return f"{v:.2g}"
            if digits is not None:
                text = f"{v:.{digits}f}"
                return text[1:] if text.startswith("-") and float(text) == 0 else text  # -0.00 reads as a sign
            return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
        return str(v)

    columns = [str(c) for c in frame.columns]
    head = "| " + " | ".join(columns) + " |"
    rule = "|" + "|".join("---" for _ in columns) + "|"
    rows = [
        "| " + " | ".join(fmt(v, c) for v, c in zip(row, columns, strict=True)) + " |"
        for row in frame.itertuples(index=False)
    ]
    return "\n".join([head, rule, *rows])


def include(name: str, page: Path) -> str:
    """``results/<name>`` without its first ``# `` heading, its relative links re-pointed from ``page``'s folder."""
    path = ROOT / "results" / name
    if ".." in Path(name).parts:
        raise ValueError(f"{page.name}: include:{name} must name a file under results/, without '..'")
    if not path.exists():
        raise FileNotFoundError(
            f"{page.name} includes results/{name}, which does not exist; run the command that makes it"
        )
    lines = path.read_text(encoding="utf-8").splitlines()
    if lines and lines[0].startswith("# "):
        lines = lines[1:]
    text = "\n".join(lines).strip("\n")
    base = Path(os.path.relpath(path.parent, page.parent))

    def repoint(m: re.Match) -> str:
        target = m.group("target")
        if re.match(r"^[a-z]+:|^/|^#", target):
            return m.group(0)
        return f"{m.group(1)}{(base / target).as_posix()})"

    return _LINK.sub(repoint, text) + "\n"


def _render_match(m: re.Match) -> str:
    digits = int(m.group("digits")) if m.group("digits") else None
    return render(m.group("name"), m.group("where"), m.group("columns"), digits)


def pages() -> list[Path]:
    """The pages whose tables are generated: README.md and every docs/*.md."""
    return [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if a page is out of date; write nothing")
    args = parser.parse_args(argv)
    stale = []
    for page in pages():
        old = page.read_text(encoding="utf-8")
        new = MARKER.sub(lambda m: m.group(1) + _render_match(m) + m.group("end"), old)
        new = INCLUDE.sub(lambda m, page=page: m.group(1) + include(m.group("name"), page) + m.group("end"), new)
        if new != old:
            stale.append(page.relative_to(ROOT))
            if not args.check:
                page.write_text(new, encoding="utf-8")
    if args.check and stale:
        print(f"out of date: {', '.join(map(str, stale))}; run python scripts/render_results.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
