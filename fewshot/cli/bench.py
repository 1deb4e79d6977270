"""``run_episode.py bench WHAT``: speed measurements. ``bench norms`` times the normalization layers,
``bench train`` the meta-training loop (episodes/s and the share of time outside the model step) and training
steps side by side with the loops a user would write, ``bench eval`` evaluation against bare forward passes,
``bench maml`` time and memory per MAML meta-step, ``bench device`` the trainer's step against a plain loop on
the same device (a GPU where there is one), ``bench distributed`` 2 ranks against 1 process per meta-step.

Each ``bench`` subcommand is one entry of :data:`SUBCOMMANDS`: a function adding its parser to the ``bench``
sub-parsers and setting ``func``. To add another, write ``_add_<name>(sub)`` and list it there.
The measurement code lives in ``benchmarks/`` (importable, e.g. ``benchmarks/bench_norms.py``); this module
only parses arguments, prints and writes.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from types import ModuleType

from fewshot.errors import ConfigError

__all__ = [
    "SUBCOMMANDS",
    "load_benchmark",
    "register",
    "run_distributed",
    "run_eval",
    "run_maml",
    "run_norms",
    "run_train",
]

REPO = Path(__file__).resolve().parents[2]


def load_benchmark(name: str) -> ModuleType:
    """Import ``benchmarks.<name>`` from the repository checkout (``benchmarks/`` is not an installed package)."""
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    try:
        return importlib.import_module(f"benchmarks.{name}")
    except ModuleNotFoundError as exc:
        if exc.name not in ("benchmarks", f"benchmarks.{name}"):
            raise
        raise ConfigError(
            f"benchmark module benchmarks/{name}.py not found under {REPO}; run from a fewshot checkout"
        ) from exc


def _comma_list(text: str) -> list[str]:
    return [t.strip() for t in text.split(",") if t.strip()]


def run_norms(args: argparse.Namespace) -> int:
    """``bench norms``: measure, print the table (or JSON), optionally write the CSV."""
    bench = load_benchmark("bench_norms")
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    out = _check_out(args)
    try:
        rows = bench.run(
            datasets=_comma_list(args.datasets),
            sections=_comma_list(args.sections),
            repeats=args.repeats,
            warmup=args.warmup,
        )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    env = bench.environment()
    if args.json:
        clean = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()} for r in rows
        ]
        print(json.dumps({"environment": env, "rows": clean, "claims": bench.claims(rows)}, indent=2))
    else:
        print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
        print(bench.format_table(rows))
        for line in bench.claims(rows):
            print(line)
    if args.write:
        from fewshot.provenance import command_line

        path = bench.write_csv(rows, out, env, force=args.force, command=command_line())
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _add_csv_options(parser: argparse.ArgumentParser, out: str, *, json: bool = False) -> None:
    """A table benchmark's output options: ``--write``, ``--out`` (default ``out``), ``--force``; ``--json`` too."""
    if json:
        parser.add_argument("--json", action="store_true", help="print JSON instead of the table")
    parser.add_argument("--write", action="store_true", help="also write the CSV (see --out)")
    parser.add_argument("--out", default=out, help="CSV path for --write")
    parser.add_argument("--force", action="store_true", help="let --write replace an existing CSV")


def _add_norms(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "norms",
        help="forward+backward time of every norm layer and of a Conv-4 ProtoNet step, as ratios to batchnorm",
        description=(
            "Times every registered normalization layer (and torch's BatchNorm2d) on the Conv-4 activation shapes "
            "of an Omniglot 60-way and a miniImageNet 5-way training episode, and one whole Conv-4 ProtoNet step, "
            "interleaved round-robin; prints medians and ratios to batchnorm measured in the same run."
        ),
    )
    _add_csv_options(parser, "results/bench_norms.csv", json=True)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median reported)")
    parser.add_argument(
        "--warmup", type=int, default=0, help="extra untimed rounds (layers are run once when built; steps get +1)"
    )
    parser.add_argument("--datasets", default="omniglot,miniimagenet", help="comma list: omniglot,miniimagenet")
    parser.add_argument("--sections", default="layer,step", help="comma list: layer (each layer), step (Conv-4)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.set_defaults(func=run_norms)


def run_train(args: argparse.Namespace) -> int:
    """``bench train``: the trainer's accounting and the side-by-side steps; print tables (or JSON), write CSVs."""
    sections = _comma_list(args.sections)
    unknown = sorted(set(sections) - set(TRAIN_SECTIONS))
    if unknown or not sections:
        raise ConfigError(
            f"--sections takes a comma list of {', '.join(TRAIN_SECTIONS)}, got {args.sections!r}; "
            "e.g. --sections steps"
        )
    if args.threads is not None:
        if args.threads < 1:
            raise ConfigError(f"--threads must be >= 1, got {args.threads}")
        import torch

        torch.set_num_threads(args.threads)
    outs = {"trainer": Path(args.out), "steps": Path(args.steps_out), "compile": Path(args.compile_out)}
    for section in sections:
        if args.write and outs[section].exists() and not args.force:  # fail before minutes of measuring
            raise ConfigError(
                f"{outs[section]} already exists; pass --force to replace it, or --out/--steps-out to write elsewhere"
            )
    results = {}
    try:
        if "trainer" in sections:
            results["trainer"] = load_benchmark("bench_train").run(
                protonet_episodes=args.protonet_episodes,
                maml_episodes=args.maml_episodes,
                warmup_steps=args.warmup_steps,
                data_root=args.data_root,
            )
        if "steps" in sections:
            results["steps"] = load_benchmark("bench_steps").run(
                protonet_steps=args.protonet_steps,
                maml_steps=args.maml_steps,
                warmup=args.warmup_steps,
                data_root=args.data_root,
                settings=_comma_list(args.settings) or None,
                only_variants=_comma_list(args.variants) or None,
            )
        if "compile" in sections:
            results["compile"] = load_benchmark("bench_compile").run(
                steps=args.protonet_steps,
                warmup=args.warmup_steps,
                data_root=args.data_root,
                settings=_comma_list(args.settings) or None,
            )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    modules = {"trainer": "bench_train", "steps": "bench_steps", "compile": "bench_compile"}
    env = load_benchmark("bench_train").environment()
    claims = load_benchmark("bench_steps").claims(results.get("steps", []))
    if args.json:
        payload = {k: [asdict(r) for r in rows] for k, rows in results.items()}
        print(json.dumps({"environment": env, **payload, "claims": claims}, indent=2))
    else:
        print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
        for section, rows in results.items():
            print(load_benchmark(modules[section]).format_table(rows))
        for line in claims:
            print(line)
    if args.write:
        from fewshot.provenance import command_line

        for section, rows in results.items():
            bench = load_benchmark(modules[section])
            path = bench.write_csv(rows, outs[section], env, command_line(), force=args.force)
            print(f"wrote {path}", file=sys.stderr)
    return 0


TRAIN_SECTIONS = ("trainer", "steps", "compile")


def _add_train(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="meta-training speed: the trainer's episodes/s, and training steps side by side with reference loops",
        description=(
            "Section 'trainer' runs the real trainer (real Omniglot, sampler, log and checkpoints) for a fixed "
            "number of episodes of ProtoNet (BN and SWBN, 60-way 1-shot) and second-order MAML (5-way 1-shot, "
            "meta-batch 32) and prints episodes/s and the fraction of loop time outside the model step. Section "
            "'steps' times training steps on the same episodes, interleaved in one process: fewshot with BN (fused "
            "and primitive-op), SWBN, IterNorm and DBN, and for ProtoNet a plain tuned loop and a learn2learn-style "
            "default loop (benchmarks/bench_steps.py), on Omniglot 60w1s5q, miniImageNet 5w1s15q and 20w5s15q and "
            "MAML Omniglot 5w1s mb32, and prints the ratios issue 13 asks for; and on Omniglot 5w1s1q (10 images) the "
            "fixed cost of a step besides its kernels. Section 'compile' (not run by "
            "default) times ProtoNet steps with and without train.compile (torch.compile), including the compile "
            "time, and the minutes a run needs before compiling pays back (benchmarks/bench_compile.py)."
        ),
    )
    parser.add_argument("--sections", default="trainer,steps", help="comma list: trainer, steps, compile")
    parser.add_argument(
        "--settings", default="", help="steps/compile: comma list of setting labels or parts of them (default all)"
    )
    parser.add_argument(
        "--variants",
        default="",
        help="steps: comma list of variant labels or parts, e.g. batchnorm,swbn (default all; keep batchnorm and "
        "plain in for the ratios)",
    )
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--protonet-episodes", type=int, default=600, help="trainer: timed ProtoNet episodes")
    parser.add_argument("--maml-episodes", type=int, default=640, help="trainer: timed MAML episodes (multiple of 32)")
    parser.add_argument("--protonet-steps", type=int, default=30, help="steps: timed ProtoNet steps per variant")
    parser.add_argument("--maml-steps", type=int, default=5, help="steps: timed MAML meta-steps per variant")
    parser.add_argument("--warmup-steps", type=int, default=2, help="untimed meta-steps first")
    parser.add_argument("--data-root", default=None, help="data root (default: the usual lookup)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of the tables")
    parser.add_argument("--write", action="store_true", help="also write the CSVs (see --out, --steps-out)")
    parser.add_argument("--out", default="results/bench_train.csv", help="CSV path of section trainer")
    parser.add_argument("--steps-out", default="results/bench_train_steps.csv", help="CSV path of section steps")
    parser.add_argument("--compile-out", default="results/bench_compile.csv", help="CSV path of section compile")
    parser.add_argument("--force", action="store_true", help="let --write replace existing CSVs")
    parser.set_defaults(func=run_train)


def run_eval(args: argparse.Namespace) -> int:
    """``bench eval``: evaluation against the bare forwards of the same images; print the times and ratios."""
    bench = load_benchmark("bench_eval")
    out = _check_out(args)
    configs = [c.strip() for c in args.config.split(",") if c.strip()]
    if not configs:
        raise ConfigError(f"--config names no experiment file, got {args.config!r}; give one or a comma list")
    rows = []
    try:
        for config in configs:
            rows.append(
                bench.run(
                    config=config,
                    episodes=args.episodes,
                    policy=args.policy,
                    rounds=args.rounds,
                    data_root=args.data_root,
                )  # fmt: skip
            )
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    env = bench.environment()
    if args.json:
        print(json.dumps({"environment": env, "rows": [asdict(r) for r in rows]}, indent=2))
    else:
        print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
        print("\n".join(bench.format_table(r) for r in rows))
    if args.write:
        from fewshot.provenance import command_line

        path = bench.write_csv(rows, out, env, command_line(), force=args.force)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _add_eval(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "eval",
        help="evaluation time against the bare forward passes of the same images",
        description=(
            "Times evaluate_episodes on the fixed test episode file of an experiment (as `eval` runs it) and the "
            "bare backbone forwards of the same episodes' images, in alternating rounds, and prints both and their "
            "ratio (benchmarks/bench_eval.py)."
        ),
    )
    parser.add_argument(
        "--config",
        default="configs/protonet/omniglot_vinyals_1shot.yaml",
        help="experiment file, or a comma list of them (measured in turn)",
    )
    parser.add_argument("--episodes", type=int, default=600, help="episodes of the test episode file")
    parser.add_argument("--policy", default=None, help="test-time norm policy (default: the config's eval.norm_policy)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds of each (median reported)")
    parser.add_argument("--data-root", default=None, help="data root (default: the usual lookup)")
    _add_csv_options(parser, "results/bench_eval.csv", json=True)
    parser.set_defaults(func=run_eval)


def _check_out(args: argparse.Namespace) -> Path:
    """The ``--out`` path; with ``--write``, refuse an existing file without ``--force`` before measuring."""
    out = Path(args.out)
    if args.write and out.exists() and not args.force:  # fail before minutes of measuring
        raise ConfigError(f"{out} already exists; pass --force to replace it, or --out to write elsewhere")
    return out


def _report_rows(bench: ModuleType, rows: list, args: argparse.Namespace, out: Path) -> int:
    """Print the environment and the table (or JSON with ``--json``); with ``--write`` write the CSV."""
    env = bench.environment()
    if getattr(args, "json", False):  # NaN (a ratio without its reference) as null: strict JSON
        clean = [
            {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in asdict(r).items()} for r in rows
        ]
        print(json.dumps({"environment": env, "rows": clean}, indent=2))
    else:
        print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
        print(bench.format_table(rows))
    if args.write:
        from fewshot.provenance import command_line

        path = bench.write_csv(rows, out, env, command_line(), force=args.force)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def run_maml(args: argparse.Namespace) -> int:
    """``bench maml``: time and peak memory per meta-step of every MAML config, order and task mode; print (or
    JSON), write the CSV."""
    bench = load_benchmark("bench_maml")
    out = _check_out(args)
    try:
        rows = bench.run(steps=args.steps, only=_comma_list(args.configs) or None, tasks=_comma_list(args.tasks))
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return _report_rows(bench, rows, args, out)


def _add_maml(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "maml",
        help="seconds and peak memory per MAML meta-step for every configs/maml file, order and task mode",
        description=(
            "Each MAML experiment file, first and second order, tasks in a loop and under torch.func.vmap, in a "
            "fresh child process: median seconds per meta-step and peak resident memory above the pre-step level, "
            "on synthetic episodes of the file's shape, and the vmap rows' speed and memory against the loop "
            "(benchmarks/bench_maml.py)."
        ),
    )
    parser.add_argument("--steps", type=int, default=3, help="timed meta-steps per configuration (after 1 untimed)")
    parser.add_argument("--configs", default="", help="comma list of config paths (default: configs/maml/*.yaml)")
    parser.add_argument(
        "--tasks", default="loop,vmap", help="comma list of task modes: loop, vmap (learner.kwargs.vmap_tasks=true)"
    )
    _add_csv_options(parser, "results/bench_maml.csv", json=True)
    parser.set_defaults(func=run_maml)


def run_data(args: argparse.Namespace) -> int:
    """``bench data``: first decode into an empty cache and cached load per split; print, write the CSV."""
    bench = load_benchmark("bench_data")
    out = _check_out(args)
    rows = bench.run(args.dataset, args.protocol, _comma_list(args.splits), data_root=args.data_root)
    return _report_rows(bench, rows, args, out)


def _add_data(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "data",
        help="first decode and cached load time of each split of a dataset",
        description=(
            "Loads each split once into an empty private decode cache (the first decode) and once from it (every "
            "later process), and prints both times (benchmarks/bench_data.py)."
        ),
    )
    parser.add_argument("--dataset", default="miniimagenet", help="dataset (default miniimagenet)")
    parser.add_argument("--protocol", default="ravi", help="protocol (default ravi)")
    parser.add_argument("--splits", default="train,val,test", help="comma list of splits")
    parser.add_argument("--data-root", default=None, help="data root (default: the usual lookup)")
    _add_csv_options(parser, "results/bench_data.csv")
    parser.set_defaults(func=run_data)


def run_device(args: argparse.Namespace) -> int:
    """``bench device``: the trainer's step vs a plain loop on the same device, interleaved; print, write the CSV."""
    from fewshot.device import run_device as selected_device

    bench = load_benchmark("bench_device")
    out = _check_out(args)
    device = selected_device("auto")  # --device, else the first CUDA device, else the CPU
    try:
        rows = bench.run(
            device=device, precision=args.precision, only=_comma_list(args.cases) or None, steps=args.steps,
            rounds=args.rounds, warmup=args.warmup, per_class=args.images_per_class,
        )  # fmt: skip
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    env = bench.environment(device)
    print("# " + ", ".join(f"{k} {v}" for k, v in env.items()))
    print(bench.format_table(rows))
    if args.write:
        from fewshot.provenance import command_line

        path = bench.write_csv(rows, out, env, command_line(), force=args.force)
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _add_device(sub: argparse._SubParsersAction) -> None:
    from fewshot.cli.device_option import add_device_option

    parser = sub.add_parser(
        "device",
        help="trainer step vs a plain torch loop on the same device (GPU or CPU), interleaved; ratios",
        description=(
            "ProtoNet Conv-4 BN/SWBN on Omniglot 60w1s5q and miniImageNet-size 20w1s15q, and second-order MAML "
            "(Conv-4 32 filters, 84x84, 5w1s15q, 5 inner steps, meta-batch 4) against plain loops on the same "
            "synthetic uint8 data held on the device, interleaved in one process (benchmarks/bench_device.py)."
        ),
    )
    add_device_option(parser)
    parser.add_argument("--precision", default="fp32", choices=("fp32", "tf32", "bf16"), help="numerics (fp32)")
    parser.add_argument("--cases", default="", help="comma list of cases (default: all of benchmarks/bench_device.py)")
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round (default 10)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (default 3; the median is kept)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first (default 2)")
    parser.add_argument("--images-per-class", type=int, default=20, help="synthetic images per class (default 20)")
    _add_csv_options(parser, "results/bench_device.csv")
    parser.set_defaults(func=run_device)


def run_distributed(args: argparse.Namespace) -> int:
    """``bench distributed``: 2 ranks × 1 thread vs 1 process × 2 threads per meta-step; print, write the CSV."""
    bench = load_benchmark("bench_distributed")
    out = _check_out(args)
    try:
        rows = bench.run(steps=args.steps, rounds=args.rounds, only=_comma_list(args.configs) or None)
    except ValueError as exc:
        raise ConfigError(str(exc)) from exc
    return _report_rows(bench, rows, args, out)


def _add_distributed(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "distributed",
        help="seconds per meta-step on 2 ranks x 1 thread vs 1 process x 2 threads, and the bytes sent per step",
        description=(
            "The trainer's meta-step (meta_loss, backward, gradient all-reduce, norm statistics gather, Adam) on "
            "one process with 2 threads and on 2 gloo ranks with 1 thread each, A B A B, for ProtoNet and MAML "
            "on Conv-4 (benchmarks/bench_distributed.py)."
        ),
    )
    parser.add_argument("--steps", type=int, default=5, help="timed meta-steps per setup and round (after 1 untimed)")
    parser.add_argument("--rounds", type=int, default=2, help="A B rounds per configuration")
    parser.add_argument("--configs", default="", help="comma list of configurations (default: all)")
    _add_csv_options(parser, "results/bench_distributed.csv", json=True)
    parser.set_defaults(func=run_distributed)


SUBCOMMANDS: dict[str, Callable[[argparse._SubParsersAction], None]] = {
    "data": _add_data,
    "device": _add_device,
    "distributed": _add_distributed,
    "maml": _add_maml,
    "norms": _add_norms,
    "train": _add_train,
    "eval": _add_eval,
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` and its subcommands to the ``run_episode.py`` parser."""
    parser = subparsers.add_parser("bench", help="speed benchmarks (bench norms, ...)")
    sub = parser.add_subparsers(dest="bench_command", metavar="WHAT")
    sub.required = True
    for add in SUBCOMMANDS.values():
        add(sub)
