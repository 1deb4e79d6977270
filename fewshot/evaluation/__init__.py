"""Evaluation on fixed episodes: per-episode accuracy, mean ± 95% CI, paired comparisons and the leak check.

Conventions (see :mod:`fewshot.evaluation.stats`): accuracy is the mean of per-episode accuracies; the 95% CI
half-width is ``1.96 · s / √n`` with the sample standard deviation ``s`` (``ddof=1``); runs are compared on
identical episodes (paired t-test and sign-flip permutation test on the per-episode differences).
"""

from fewshot.evaluation.compare import Comparison as Comparison
from fewshot.evaluation.compare import compare_runs as compare_runs
from fewshot.evaluation.evaluate import POLICIES as POLICIES
from fewshot.evaluation.evaluate import EvalResult as EvalResult
from fewshot.evaluation.evaluate import evaluate_episodes as evaluate_episodes
from fewshot.evaluation.leak import LeakReport as LeakReport
from fewshot.evaluation.leak import check_leak as check_leak
from fewshot.evaluation.run_eval import RunEvaluation as RunEvaluation
from fewshot.evaluation.run_eval import evaluate_run as evaluate_run
from fewshot.evaluation.stats import MeanCI as MeanCI
from fewshot.evaluation.stats import PairedComparison as PairedComparison
from fewshot.evaluation.stats import mean_ci as mean_ci
from fewshot.evaluation.stats import paired_comparison as paired_comparison
from fewshot.evaluation.stats import paired_t_test as paired_t_test
from fewshot.evaluation.stats import sign_flip_test as sign_flip_test

__all__ = [
    "POLICIES",
    "Comparison",
    "EvalResult",
    "LeakReport",
    "MeanCI",
    "PairedComparison",
    "RunEvaluation",
    "check_leak",
    "compare_runs",
    "evaluate_episodes",
    "evaluate_run",
    "mean_ci",
    "paired_comparison",
    "paired_t_test",
    "sign_flip_test",
]
