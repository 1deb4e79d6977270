"""Plain-text reports printed by ``eval``, ``compare`` and ``study`` (accuracies in percent).

Every accuracy line says what it is: mean of per-episode accuracies ± 95% CI half-width, the number of
episodes, the task size and the normalization policy.
"""

from __future__ import annotations

import math
from typing import Any

from fewshot.evaluation.compare import Comparison
from fewshot.evaluation.leak import LeakReport
from fewshot.evaluation.stats import PairedComparison

__all__ = ["format_accuracy", "format_eval", "format_leak", "format_pair", "format_comparison"]


def _pct(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.2f}"


def _p(p: float) -> str:
    """``p = 0.012``; ``p < 1e-300`` when the value underflowed (an enormous t statistic)."""
    if p == 0.0:
        return "p < 1e-300"
    return f"p = {p:.2g}" if p < 0.001 else f"p = {p:.3f}"


def format_accuracy(summary: dict[str, Any]) -> str:
    """``97.83% ± 0.41% (95% CI, n=600 episodes, 5-way 1-shot, 15 queries/class, policy running)``."""
    ci = summary.get("ci95")
    return (
        f"{_pct(summary['mean'])}% ± {_pct(ci)}% (95% CI, n={summary['n']} episodes, {summary['way']}-way "
        f"{summary['shot']}-shot, {summary['query']} queries/class, policy {summary['policy']})"
    )


def format_eval(label: str, evaluation: Any) -> str:
    """The lines ``eval`` prints for one :class:`~fewshot.evaluation.run_eval.RunEvaluation`."""
    s = evaluation.summary
    how = "reused: same episodes, policy and checkpoint" if evaluation.reused else "written"
    lines = [
        f"run:       {evaluation.run_dir}  ({label}, checkpoint {s.get('checkpoint_file', s.get('checkpoint'))})",
        f"accuracy:  {format_accuracy(s)}",
        f"episodes:  {s.get('dataset')}/{s.get('protocol')} split {s.get('split')!r}, seed {s.get('seed')}, "
        f"file {s.get('episode_file')} (content hash {s['episode_hash'][:12]})",
        f"results:   {evaluation.folder}/episodes.csv, summary.json ({how})",
    ]
    if evaluation.leak is not None:
        lines.append(format_leak(evaluation.leak))
    return "\n".join(lines)


def format_leak(report: LeakReport) -> str:
    """The leak-check lines: what was measured, on how many episodes, and the verdict."""
    head = (
        f"leak check (first {report.n_episodes} episode{'s' if report.n_episodes != 1 else ''}, {report.n_queries} "
        f"queries scored whole and one at a "
        f"time, policy {report.policy}):\n"
    )
    if report.max_abs_logit_diff is None:
        return f"{head}  verdict: {report.verdict}"
    return (
        f"{head}  max |logit difference| = {report.max_abs_logit_diff:.3g} (float-rounding tolerance "
        f"{report.tolerance:.2g}); accuracy whole {_pct(report.acc_whole)}% vs one at a time "
        f"{_pct(report.acc_single)}% (difference {100 * (report.acc_diff or 0.0):+.2f} points); "
        f"{report.changed_predictions} predictions changed\n"
        f"  verdict: {report.verdict}"
    )


def format_pair(reference: str, other: str, p: PairedComparison) -> str:
    """One paired comparison: difference ± CI in points, both p-values, wins/ties/losses."""
    if p.perm_exact:
        perm = f"{_p(p.p_perm)} (exact)"
    elif p.p_perm * (1 + p.perm_resamples) < 1.5:  # no random sign pattern was as extreme as the data
        perm = f"p ≤ {p.p_perm:.2g} (the smallest possible with {p.perm_resamples} random sign flips)"
    else:
        perm = f"{_p(p.p_perm)} ({p.perm_resamples} random sign flips)"
    return (
        f"{other} − {reference}: {100 * p.mean_diff:+.2f} ± {_pct(p.ci95_diff)} points (mean per-episode "
        f"difference ± 95% CI, n={p.n}); paired t-test {_p(p.p_t)} (t = {p.t:.3f}, df = {p.df}); sign-flip "
        f"permutation {perm}; wins/ties/losses over episodes {p.wins}/{p.ties}/{p.losses}"
    )


def format_comparison(comparison: Comparison) -> str:
    """What ``compare`` prints: the shared episodes, each run's accuracy, and each run against the first."""
    data = comparison.to_dict()
    e = data["episodes"]
    width = max(len(lab) for lab in comparison.labels)
    lines = [
        f"episodes: {e['n']} × {e['way']}-way {e['shot']}-shot {e['query']}-query, {e['dataset']}/{e['protocol']} "
        f"split {e['split']!r}, seed {e['seed']}, file {e['file']} (content hash {e['hash'][:12]})",
    ]
    for i, (label, run) in enumerate(zip(comparison.labels, comparison.runs, strict=True)):
        role = "reference" if i == 0 else "         "
        reused = ", reused" if run.reused else ""
        lines.append(f"{role} {label:<{width}}  {format_accuracy(run.summary)}  [{run.run_dir}{reused}]")
    lines.append("")
    ref = comparison.labels[0]
    for label, pair in zip(comparison.labels[1:], comparison.pairs, strict=True):
        lines.append(format_pair(ref, label, pair))
    return "\n".join(lines)
