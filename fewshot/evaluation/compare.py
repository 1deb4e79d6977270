"""Paired comparison of two or more runs on the very same fixed test episodes.

Each run after the first is compared with the first (the reference) through the per-episode accuracy
differences ``run − reference`` (see :mod:`fewshot.evaluation.stats` for the statistics). The runs must agree on
everything that determines the episode file: dataset, protocol, test split, data options and the ``eval``
way/shot/query/episodes/seed/within-alphabet settings; otherwise a ConfigError names the first difference.
Their test-time policies may differ (each run uses its own ``eval.norm_policy``) and are reported.
Existing evaluations are reused when the episode-set hash, policy and checkpoint match.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fewshot.errors import ConfigError, DataError
from fewshot.evaluation.run_eval import RunEvaluation, evaluate_run, load_run_config
from fewshot.evaluation.stats import PairedComparison, paired_comparison
from fewshot.registry import option_label
from fewshot.training.run_dir import verify_run

__all__ = ["SHARED_FIELDS", "Comparison", "run_label", "check_comparable", "compare_runs"]

SHARED_FIELDS = (
    "data.dataset", "data.protocol", "data.test_split", "data.options",
    "eval.n_way", "eval.n_shot", "eval.n_query", "eval.episodes", "eval.seed", "eval.within_alphabet",
)  # fmt: skip
"""Config keys that must be equal for runs to share a test-episode file."""


def _field(cfg: Any, dotted: str) -> Any:
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def run_label(cfg: Any) -> str:
    """``learner/backbone/norm[options]``, e.g. ``protonet/conv4/swbn``, ``maml/conv4_maml/swbn[shrinkage=0.1]``."""
    return f"{cfg.learner.name}/{cfg.model.backbone}/{option_label(cfg.model.norm, cfg.model.norm_kwargs)}"


def check_comparable(configs: Sequence[Any], names: Sequence[str], ignore: Sequence[str] = ()) -> None:
    """Raise ConfigError naming the first :data:`SHARED_FIELDS` key on which a run differs from the first.

    ``ignore`` lists keys set for all runs alike by the caller (e.g. ``eval.n_way`` when comparing at 20-way).
    """
    ref = configs[0]
    for cfg, name in zip(configs[1:], names[1:], strict=True):
        for key in SHARED_FIELDS:
            if key in ignore:
                continue
            a, b = _field(ref, key), _field(cfg, key)
            if a != b:
                raise ConfigError(
                    f"runs cannot be compared on the same episodes: {key} is {a!r} in {names[0]!r} but {b!r} in "
                    f"{name!r}; compare runs trained and evaluated on the same dataset, protocol, test split, "
                    f"data options and eval way/shot/query/episodes/seed"
                )


@dataclass(frozen=True)
class Comparison:
    """The evaluations of the runs and each run's paired comparison with the first.

    Attributes:
        runs: one :class:`RunEvaluation` per run, the reference first.
        labels: ``learner/backbone/norm`` of each run (with the run directory name appended when ambiguous).
        pairs: ``pairs[i]`` compares ``runs[i + 1]`` with ``runs[0]`` (difference = run − reference).
    """

    runs: tuple[RunEvaluation, ...]
    labels: tuple[str, ...]
    pairs: tuple[PairedComparison, ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: run summaries and pairwise statistics (accuracies and differences as fractions)."""
        ref = self.runs[0]
        runs = [
            {
                "label": label,
                "run": str(r.run_dir),
                "policy": r.summary["policy"],
                "mean": r.summary["mean"],
                "ci95": r.summary["ci95"],
                "n": r.summary["n"],
                "reused": r.reused,
                "eval_folder": str(r.folder),
            }
            for label, r in zip(self.labels, self.runs, strict=True)
        ]
        pairs = [
            {"reference": self.labels[0], "other": self.labels[i + 1], **p.to_dict()} for i, p in enumerate(self.pairs)
        ]
        s = ref.summary
        return {
            "episodes": {
                "file": s.get("episode_file"),
                "hash": s["episode_hash"],
                "dataset": s.get("dataset"),
                "protocol": s.get("protocol"),
                "split": s.get("split"),
                "way": s["way"],
                "shot": s["shot"],
                "query": s["query"],
                "n": s["n"],
                "seed": s.get("seed"),
            },
            "difference": "other - reference, per episode; positive = other is more accurate",
            "runs": runs,
            "pairs": pairs,
        }


def compare_runs(
    run_dirs: Sequence[str | Path],
    *,
    reuse: bool = True,
    progress: bool = False,
    n_resamples: int = 20_000,
    seed: int = 0,
    runs_root: str | Path | None = None,
    n_way: int | None = None,
    n_shot: int | None = None,
    n_query: int | None = None,
    episodes: int | None = None,
    policy: str | None = None,
) -> Comparison:
    """Evaluate (or reuse) every run on the shared episode file and compare each with the first.

    Args:
        run_dirs: two or more run directories; the first is the reference.
        n_way, n_shot, n_query, episodes: evaluate every run at these settings instead of its ``eval`` ones
            (e.g. 20-way 5-shot for models trained at 60-way 1-shot); the runs then need not agree on them.
        policy: score every run with this test-time norm policy (``running``, ``support``, ``transductive``)
            instead of its own ``eval.norm_policy``.
        reuse: reuse matching evaluations instead of recomputing.
        progress: show progress bars while evaluating.
        n_resamples: Monte Carlo sign patterns of the permutation test (when not exact).
        seed: seed of the permutation test.
        runs_root: where ``_episode_sets/`` lives.

    Raises:
        ConfigError: fewer than two runs, the same run twice, or runs that do not share the episode file.
        DataError: a damaged checkpoint, a ``config.yaml`` edited after training, or runs scored on different
            episode files.
    """
    dirs = [Path(d) for d in run_dirs]
    if len(dirs) < 2:
        raise ConfigError(f"compare needs at least two runs, got {len(dirs)}; pass --runs REFERENCE OTHER [...]")
    resolved = [d.resolve() for d in dirs]
    if len(set(resolved)) != len(resolved):
        raise ConfigError("compare got the same run directory twice; pass distinct runs")
    for d in dirs:
        load_run_config(d)  # the clear "not a run directory" error first
    configs = [verify_run(d) for d in dirs]  # checkpoints intact and config.yaml as trained
    request = {"n_way": n_way, "n_shot": n_shot, "n_query": n_query, "episodes": episodes}
    check_comparable(configs, [str(d) for d in dirs], ignore=[f"eval.{k}" for k, v in request.items() if v is not None])
    evaluations = tuple(
        evaluate_run(d, reuse=reuse, progress=progress, runs_root=runs_root, policy=policy, **request) for d in dirs
    )
    hashes = {e.summary["episode_hash"] for e in evaluations}
    if len(hashes) != 1:
        raise DataError(
            f"the runs were evaluated on different episode files (hashes {sorted(h[:12] for h in hashes)}) although "
            "their configs agree; the data changed between evaluations: re-run `run_episode.py eval` on each run"
        )
    labels = [run_label(c) for c in configs]
    if len(set(labels)) != len(labels):
        labels = [f"{lab} ({d.name})" for lab, d in zip(labels, dirs, strict=True)]
    ref = evaluations[0].acc
    pairs = tuple(paired_comparison(ref, e.acc, n_resamples=n_resamples, seed=seed) for e in evaluations[1:])
    return Comparison(runs=evaluations, labels=tuple(labels), pairs=pairs)
