#!/usr/bin/env python
"""Episode sampling speed and split load time, on one CPU thread.

Measures, side by side in one run:

* episodes per second of ``EpisodeSampler`` (full episodes with tensors, and ``indices`` alone) for 5w1s15q,
  5w5s15q, 20w1s15q and 60w5s5q on the Omniglot Vinyals train split (4112 classes of 20 images, 28x28), read
  from the in-memory store. Without the real data, a synthetic split of the same shape is used, and the
  table says so;
* the time to load that split cold (a fresh, empty ``$FEWSHOT_CACHE``: decode and preprocess the sources)
  and cached (the second call, from the decoded cache). The operating system's file cache is not dropped;
  "cold" means cold for fewshot's own cache only;
* the cost of making one episode's generator: ``Generator(Philox(key=[seed, i]))`` (used) against
  ``Generator(PCG64(SeedSequence([seed, i])))``.

Each figure is given by the wall clock and per CPU second of this process (``time.process_time``); on a
machine shared with other jobs the CPU figure is the steadier of the two. The load average is printed.

Usage::

    python benchmarks/bench_episodes.py [--seconds 1.0] [--data-root DIR] [--write [--out FILE] [--force]]

``--write`` also writes ``results/bench_episodes.csv`` (or ``--out``): ``# command:`` with the exact command, a
``#`` line with the environment (torch, numpy, threads, date, load average), then one row per figure. An existing
file is replaced only with ``--force``.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._results import environment, write_result  # noqa: E402
from episodes.data_root import CACHE_ENV  # noqa: E402
from episodes.datasets import load_split  # noqa: E402
from episodes.sampler import EpisodeSampler  # noqa: E402
from episodes.split import ClassSplit  # noqa: E402
from fewshot.errors import DataError  # noqa: E402

__all__ = ["CONFIGS", "main", "run", "synthetic_vinyals_train", "table"]

CONFIGS = ((5, 1, 15), (5, 5, 15), (20, 1, 15), (60, 5, 5))
RESULT = REPO / "results" / "bench_episodes.csv"


def synthetic_vinyals_train(seed: int = 0) -> ClassSplit:
    """A split shaped like Omniglot Vinyals train: 1028 characters x 20 images x 28x28, 4 rotations each."""
    rng = np.random.default_rng(seed)
    n_chars = 1028
    images = rng.integers(0, 256, (n_chars * 20, 28, 28), dtype=np.uint8)
    names, class_images, rotation, groups = [], [], [], []
    for c in range(n_chars):
        for k in range(4):
            names.append(f"A{c % 33:02d}/character{c:04d}/rot{90 * k:03d}")
            class_images.append(np.arange(20 * c, 20 * c + 20, dtype=np.int64))
            rotation.append(k)
            groups.append(f"A{c % 33:02d}")
    ids = [f"A{(r // 20) % 33:02d}/character{r // 20:04d}/{r % 20:02d}" for r in range(len(images))]
    return ClassSplit(
        "synthetic",
        "vinyals-shaped",
        "train",
        images,
        ids,
        names,
        class_images,
        np.array(rotation),
        groups,
        "synthetic",
    )


def _clock() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _since(start: tuple[float, float]) -> tuple[float, float]:
    wall, cpu = _clock()
    return wall - start[0], cpu - start[1]


def load_times(data_root: str | None) -> tuple[ClassSplit | None, tuple | None, tuple | None]:
    """(split, cold (wall, cpu) seconds, cached (wall, cpu) seconds); Nones if the real data is absent."""
    previous = os.environ.get(CACHE_ENV)
    with tempfile.TemporaryDirectory(prefix="fewshot-bench-cache-") as cache:
        os.environ[CACHE_ENV] = cache
        try:
            start = _clock()
            load_split("omniglot", "vinyals", "train", data_root)
            cold = _since(start)
            start = _clock()
            split = load_split("omniglot", "vinyals", "train", data_root)
            cached = _since(start)
        except DataError as exc:
            print(f"note: the real Omniglot is not available ({exc})", file=sys.stderr)
            return None, None, None
        finally:
            if previous is None:
                os.environ.pop(CACHE_ENV, None)
            else:
                os.environ[CACHE_ENV] = previous
    return split, cold, cached


def rate(fn, seconds: float, repeats: int = 3) -> tuple[float, float]:
    """Calls per second of ``fn(i)`` (wall clock, and per CPU second of this process): medians of ``repeats``."""
    for i in range(20):  # warm-up
        fn(i)
    walls, cpus = [], []
    index = 20
    for _ in range(repeats):
        n, start = 0, _clock()
        while True:
            for _ in range(25):
                fn(index + n)
                n += 1
            wall, cpu = _since(start)
            if wall >= seconds / repeats:
                break
        index += n
        walls.append(n / wall)
        cpus.append(n / max(cpu, 1e-9))
    return statistics.median(walls), statistics.median(cpus)


def generator_costs(n: int = 20000) -> tuple[tuple[float, float], tuple[float, float]]:
    """Microseconds (wall, cpu) per generator for Philox(key) and for PCG64(SeedSequence)."""
    start = _clock()
    for i in range(n):
        np.random.Generator(np.random.Philox(key=np.array([0, i], dtype=np.uint64)))
    philox = _since(start)
    start = _clock()
    for i in range(n):
        np.random.Generator(np.random.PCG64(np.random.SeedSequence([0, i])))
    seedseq = _since(start)
    return (philox[0] / n * 1e6, philox[1] / n * 1e6), (seedseq[0] / n * 1e6, seedseq[1] / n * 1e6)


def run(seconds: float, data_root: str | None) -> list[dict]:
    """All measurements as rows ``{kind, config, wall, cpu, unit, data}``."""
    torch.set_num_threads(1)
    split, cold, cached = load_times(data_root)
    data = "omniglot vinyals train" if split is not None else "synthetic (real Omniglot absent)"
    if split is None:
        split = synthetic_vinyals_train()
    rows = []

    def add(kind: str, config: str, values: tuple[float, float], unit: str, source: str = data) -> None:
        rows.append({"kind": kind, "config": config, "wall": values[0], "cpu": values[1], "unit": unit, "data": source})

    if cold is not None:
        add("load split", "cold (empty cache)", cold, "s")
        add("load split", "cached", cached, "s")
    for n_way, n_shot, n_query in CONFIGS:
        sampler = EpisodeSampler(split, n_way, n_shot, n_query, seed=0)
        config = f"{n_way}w{n_shot}s{n_query}q"
        add("episodes", config, rate(sampler.__getitem__, seconds), "episodes/s")
        add("indices only", config, rate(sampler.indices, seconds / 2), "episodes/s")
    philox, seedseq = generator_costs()
    add("generator", "Philox(key=[seed, i])", philox, "us", "-")
    add("generator", "PCG64(SeedSequence)", seedseq, "us", "-")
    return rows


def _fmt(v: float) -> str:
    return f"{v:.3g}" if v < 100 else f"{v:.0f}"


def table(rows: list[dict]) -> str:
    cells = [("measure", "setting", "wall", "per CPU s", "unit")]
    cells += [(r["kind"], r["config"], _fmt(r["wall"]), _fmt(r["cpu"]), r["unit"]) for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(5)]
    lines = [
        "  ".join(c[i].rjust(widths[i]) if i in (2, 3) else c[i].ljust(widths[i]) for i in range(5)) for c in cells
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def to_csv(rows: list[dict], command: str, env: dict[str, str]) -> str:
    """CSV text: the command and the environment as ``#`` lines, then kind, config, wall, cpu, unit, data."""
    buf = io.StringIO()
    buf.write(f"# command: {command}\n")
    buf.write("# " + ", ".join(f"{k} {v}" for k, v in env.items()) + "\n")
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["kind", "config", "wall", "cpu", "unit", "data"])
    for r in rows:
        writer.writerow([r["kind"], r["config"], f"{r['wall']:.6g}", f"{r['cpu']:.6g}", r["unit"], r["data"]])
    return buf.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=1.0, help="timing budget per setting (default 1.0)")
    parser.add_argument("--data-root", default=None, help="data root holding omniglot/ (default: resolved)")
    parser.add_argument("--write", action="store_true", help="also write the CSV (see --out)")
    parser.add_argument("--out", default=str(RESULT.relative_to(REPO)), help="CSV path for --write")
    parser.add_argument("--force", action="store_true", help="let --write replace an existing CSV")
    args = parser.parse_args(argv)
    if args.seconds <= 0:
        parser.error(f"--seconds must be positive, got {args.seconds}")
    out = Path(args.out) if Path(args.out).is_absolute() else REPO / args.out
    if args.write and out.exists() and not args.force:
        parser.error(f"{args.out} already exists; pass --force to replace it, or --out to write elsewhere")
    rows = run(args.seconds, args.data_root)
    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    print(f"data: {rows[-3]['data']}; torch {torch.__version__}, numpy {np.__version__}, 1 thread{load}")
    print(table(rows))
    if args.write:
        command = "python " + " ".join([Path(sys.argv[0]).as_posix(), *(argv if argv is not None else sys.argv[1:])])
        env = dict(environment(), numpy=np.__version__, threads=str(torch.get_num_threads()))
        print(f"wrote {write_result(out, to_csv(rows, command, env), force=args.force)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
