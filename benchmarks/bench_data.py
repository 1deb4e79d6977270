"""Dataset loading: the first decode of a split into the uint8 cache, then the load from that cache.

``python run_episode.py bench data [--dataset miniimagenet] [--protocol ravi] [--splits train,val,test]
[--write]``. Each split is loaded once with an empty, private cache folder (``$FEWSHOT_CACHE`` pointed at a
temporary directory: the JPEG/PNG decode and any resize), then once more from that cache (what every later
training or evaluation process pays). The data root is the usual lookup (``--data-root`` to override). File
reads after the first are served by the OS page cache either way, so ``first`` is decode time, not disk time.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from benchmarks._results import environment, rows_to_csv, write_result

__all__ = ["DataRow", "environment", "format_table", "run", "write_csv"]


@dataclass
class DataRow:
    """Seconds to load one split: decoding into an empty cache, then from the cache; its size."""

    dataset: str
    protocol: str
    split: str
    images: int
    megabytes: float
    first_s: float
    cached_s: float


def _timed_load(dataset: str, protocol: str, split: str, data_root: str | None) -> tuple[float, object]:
    from episodes.datasets import load_split

    start = time.perf_counter()
    loaded = load_split(dataset, protocol, split, data_root)
    return time.perf_counter() - start, loaded


def run(dataset: str, protocol: str, splits: list[str], data_root: str | None = None) -> list[DataRow]:
    """Time every split of ``splits`` (first decode into a private empty cache, then a cached load)."""
    from episodes.cache import resolve_cache_dir

    rows = []
    saved = os.environ.get("FEWSHOT_CACHE")
    with tempfile.TemporaryDirectory(prefix="fewshot-bench-data-") as cache:
        os.environ["FEWSHOT_CACHE"] = cache
        try:
            if Path(resolve_cache_dir()) != Path(cache):
                raise ValueError(f"could not point the decode cache at {cache}; unset FEWSHOT_CACHE overrides")
            for split in splits:
                first, _ = _timed_load(dataset, protocol, split, data_root)
                cached, loaded = _timed_load(dataset, protocol, split, data_root)
                images = loaded.images
                rows.append(DataRow(dataset, protocol, split, len(images), round(images.nbytes / 2**20, 1),
                                    round(first, 2), round(cached, 2)))  # fmt: skip
        finally:
            if saved is None:
                os.environ.pop("FEWSHOT_CACHE", None)
            else:
                os.environ["FEWSHOT_CACHE"] = saved
    return rows


def format_table(rows: list[DataRow]) -> str:
    """One line per split: images, size, first decode and cached load seconds."""
    lines = [f"{'split':<8} {'images':>7} {'MiB':>7} {'first_s':>8} {'cached_s':>9}"]
    lines += [f"{r.split:<8} {r.images:>7} {r.megabytes:>7.1f} {r.first_s:>8.2f} {r.cached_s:>9.2f}" for r in rows]
    return "\n".join(lines)


def write_csv(rows: list[DataRow], path: str | Path, env: dict, command: str, force: bool = False) -> Path:
    """``results/bench_data.csv``: the command, the environment, one row per split."""
    return write_result(path, rows_to_csv(rows, DataRow, env, command), force=force)
