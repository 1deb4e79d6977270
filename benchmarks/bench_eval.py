"""Evaluation speed: ``evaluate_episodes`` against the bare forward passes of the same images, side by side.

``python run_episode.py bench eval [--config FILE] [--episodes 600] [--policy running] [--rounds 3]``. Builds the
learner of an experiment file (fresh initialization: the speed does not depend on the weights), binds the fixed
test episode file that ``run_episode.py eval`` would use (same split, way/shot/query, seed), and times, in
alternating rounds in one process:

* ``evaluate``: :func:`fewshot.evaluation.evaluate_episodes` over the episode file, exactly as ``eval`` runs it
  (episodes bound from the file inside the loop, ``predict`` with the norm policy, the state check);
* ``bare``: ``learner.backbone`` on each episode's support and query images under ``no_grad`` in eval mode, on
  the same episodes built in advance: the model's own cost, no framework around it.

Reported: median seconds of each over the rounds and ``evaluate / bare`` (issue 13 asks for ≤ 1.2 or a 2×
speed-up). Default: ``configs/protonet/omniglot_vinyals_1shot.yaml``, 600 episodes of 5-way 1-shot 15-query;
``--config`` takes a comma list (each file measured in turn), ``--write`` the CSV ``results/bench_eval.csv``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks._results import environment, rows_to_csv, write_result

__all__ = ["EvalRow", "environment", "format_table", "run", "to_csv", "write_csv"]

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = "configs/protonet/omniglot_vinyals_1shot.yaml"


@dataclass
class EvalRow:
    """Median seconds over the rounds for evaluation and for the bare forwards, and their ratio."""

    config: str
    episodes: int
    policy: str
    evaluate_seconds: float
    bare_seconds: float
    ratio: float


def run(
    *,
    config: str = DEFAULT_CONFIG,
    episodes: int = 600,
    policy: str | None = None,
    rounds: int = 3,
    data_root: str | None = None,
    runs_root: str | None = None,
) -> EvalRow:
    """Time evaluation and bare forwards on the test episode file of ``config`` (see the module docstring)."""
    from fewshot.config import load_config
    from fewshot.evaluation.evaluate import check_policy, evaluate_episodes
    from fewshot.training.build import build_learner, build_split
    from fewshot.training.episode_sets import get_episode_set

    if episodes < 1 or rounds < 1:
        raise ValueError(f"episodes and rounds must be >= 1, got episodes {episodes}, rounds {rounds}")
    cfg = load_config(REPO / config if not Path(config).is_absolute() else config,
                      [f"data.data_root={data_root!r}"] if data_root else [])  # fmt: skip
    policy = check_policy(policy or cfg.eval.norm_policy)
    e = cfg.eval
    split = build_split(cfg, cfg.data.test_split)
    eset = get_episode_set(
        split, e.n_way, e.n_shot, e.n_query, seed=e.seed, count=episodes, within_alphabet=e.within_alphabet,
        root=runs_root,
    )  # fmt: skip
    torch.manual_seed(cfg.seed)
    learner = build_learner(cfg, e.n_way, split.image_shape).eval()
    built = [eset.episodes[i] for i in range(episodes)]

    def bare() -> None:
        with torch.no_grad():
            for ep in built:
                learner.backbone(learner.prepare(ep.support_x))
                learner.backbone(learner.prepare(ep.query_x))

    def evaluate() -> None:
        evaluate_episodes(learner, eset.episodes, policy=policy, channels_last=cfg.train.channels_last)

    times: dict[str, list[float]] = {"evaluate": [], "bare": []}
    fns = {"evaluate": evaluate, "bare": bare}
    bare()  # warm-up
    for r in range(rounds):
        for name in ("evaluate", "bare") if r % 2 == 0 else ("bare", "evaluate"):
            t0 = time.perf_counter()
            fns[name]()
            times[name].append(time.perf_counter() - t0)
    ev, bw = statistics.median(times["evaluate"]), statistics.median(times["bare"])
    return EvalRow(config, episodes, policy, ev, bw, ev / bw)


def format_table(row: EvalRow) -> str:
    """Two lines: the measured medians and the ratio."""
    return (
        f"{row.config}: {row.episodes} episodes, policy {row.policy}\n"
        f"evaluate {row.evaluate_seconds:.2f} s, bare forwards {row.bare_seconds:.2f} s, "
        f"evaluate / bare {row.ratio:.3f} (issue 13: <= 1.20)"
    )


def to_csv(rows: list[EvalRow], env: dict[str, str], command: str) -> str:
    """CSV text: the command and environment lines, then one row per experiment file."""
    formats = {"evaluate_seconds": ".3f", "bare_seconds": ".3f", "ratio": ".4f"}
    return rows_to_csv(rows, EvalRow, env, command, formats)


def write_csv(rows: list[EvalRow], path: Path, env: dict[str, str], command: str, force: bool = False) -> Path:
    """Write :func:`to_csv` to ``path`` atomically; never replaces an existing file unless ``force``."""
    return write_result(path, to_csv(rows, env, command), force=force)
