"""Statistics for few-shot evaluation: mean ± 95% CI, paired t-test and paired sign-flip permutation test.

Conventions (the same everywhere in fewshot, and in the README):

* **Accuracy** of a run on an episode set is the **mean of per-episode accuracies** (each episode's accuracy is
  its fraction of correctly classified queries); queries are never pooled across episodes.
* **95% confidence interval** half-width = ``1.96 · s / √n``, with ``s`` the *sample* standard deviation
  (``ddof=1``, Bessel's correction) of the ``n`` per-episode accuracies. This is the normal-approximation
  interval used by ProtoNets, MAML and mmfewshot (1.96·std/√n); for ``n ≥ 100`` it is within 1% of the
  Student-t interval. With ``n = 1`` the standard deviation and the interval are undefined (``nan``).
* **Paired comparisons** are made on *identical* episodes: run B is compared to run A through the per-episode
  differences ``d_i = acc_B(i) − acc_A(i)``; a positive mean difference means B is better. Reported: the mean
  difference with its 95% CI (same formula on ``d``), the two-sided paired t-test p-value (Student t with
  ``n − 1`` degrees of freedom), the two-sided paired sign-flip permutation p-value, and wins/ties/losses of B
  over A counted over episodes.

Across training seeds (:func:`hierarchical_bootstrap`): the accuracy of a cell is the mean over seeds of the
per-seed means on the same episode file; its 95% interval is the percentile interval of a two-level bootstrap
that resamples seeds and one set of episodes shared by them (every seed is scored on the same episodes), widened
for two or more seeds to contain a Student-t interval whose seed term has ``S − 1`` degrees of freedom
(:func:`crossed_t_interval`), which a seed-level bootstrap of few seeds lacks.

The t distribution comes from :mod:`scipy.stats` (``ttest_1samp`` on the differences, identical to ``ttest_rel``).
The sign-flip test and the two-level bootstrap draw their resamples with numpy, each for a stated reason: the
committed Monte Carlo p-values (``results/compare_*.csv``) are reproduced only by this generator stream, and
``scipy.stats.bootstrap`` resamples one level. ``scipy.stats.permutation_test`` is the reference the sign-flip
test is checked against in the tests; ``python scripts/check_results_stats.py`` recomputes the committed tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from fractions import Fraction

import numpy as np

__all__ = [
    "Z_95",
    "exact_mean_difference",
    "MeanCI",
    "PairedComparison",
    "mean_ci",
    "paired_t_test",
    "sign_flip_test",
    "paired_comparison",
    "HierarchicalCI",
    "crossed_t_interval",
    "hierarchical_bootstrap",
]

Z_95 = 1.96
"""Normal quantile used for the 95% confidence interval half-width (1.96 · s / √n)."""

_EXACT_MAX_NONZERO = 16  # sign-flip test enumerates all 2^m sign patterns up to m = 16 non-zero differences
_MAX_ACCURACY_DENOMINATOR = 100_000  # queries per episode up to which accuracies are read back as exact ratios


@dataclass(frozen=True)
class MeanCI:
    """Mean of ``n`` values with the half-width of its 95% CI.

    Attributes:
        mean: arithmetic mean.
        std: sample standard deviation (``ddof=1``); ``nan`` when ``n < 2``.
        ci95: ``1.96 · std / √n``; ``nan`` when ``n < 2``.
        n: number of values.
    """

    mean: float
    std: float
    ci95: float
    n: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


@dataclass(frozen=True)
class PairedComparison:
    """Result of :func:`paired_comparison` (B versus A on the same episodes; ``diff = B − A``).

    Attributes:
        n: number of paired episodes.
        mean_a: mean accuracy of A.
        mean_b: mean accuracy of B.
        mean_diff: mean of the per-episode differences ``B − A``.
        ci95_diff: half-width of the 95% CI of ``mean_diff`` (``1.96 · s_d / √n``, ``ddof=1``).
        t: paired t statistic ``mean_diff / (s_d / √n)`` (``±inf`` if all differences are equal and non-zero,
            ``0`` if all are zero).
        df: degrees of freedom ``n − 1``.
        p_t: two-sided paired t-test p-value.
        p_perm: two-sided paired sign-flip permutation p-value.
        perm_exact: whether ``p_perm`` enumerated every sign pattern (else Monte Carlo).
        perm_resamples: number of sign patterns evaluated.
        wins: episodes where B is more accurate than A.
        ties: episodes where both are equally accurate.
        losses: episodes where B is less accurate than A.
    """

    n: int
    mean_a: float
    mean_b: float
    mean_diff: float
    ci95_diff: float
    t: float
    df: int
    p_t: float
    p_perm: float
    perm_exact: bool
    perm_resamples: int
    wins: int
    ties: int
    losses: int

    def to_dict(self) -> dict[str, float | int | bool]:
        return asdict(self)


def _as_1d(values: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be a 1-D sequence of numbers, got an array of shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty; at least one value (one episode) is needed")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains non-finite values (nan or inf); per-episode accuracies must be finite")
    return arr


def mean_ci(values: Sequence[float] | np.ndarray) -> MeanCI:
    """Mean with its 95% CI half-width ``1.96 · s / √n`` (``s`` with ``ddof=1``).

    Args:
        values: ``(n,)`` per-episode accuracies (or any finite values).

    Returns:
        A :class:`MeanCI`; ``std`` and ``ci95`` are ``nan`` for a single value.

    Example:
        >>> r = mean_ci([0.6, 0.8, 1.0])
        >>> round(r.mean, 6), round(r.std, 6), round(r.ci95, 6), r.n
        (0.8, 0.2, 0.226321, 3)
    """
    arr = _as_1d(values, "values")
    n = int(arr.size)
    mean = float(arr.mean())
    if n < 2:
        return MeanCI(mean=mean, std=math.nan, ci95=math.nan, n=n)
    std = float(arr.std(ddof=1))
    return MeanCI(mean=mean, std=std, ci95=Z_95 * std / math.sqrt(n), n=n)


def _differences(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> np.ndarray:
    arr_a, arr_b = _as_1d(a, "a"), _as_1d(b, "b")
    if arr_a.shape != arr_b.shape:
        raise ValueError(
            f"paired samples must have equal length (one value per shared episode), got {arr_a.size} and "
            f"{arr_b.size}; evaluate both runs on the same episode file"
        )
    return arr_b - arr_a


def exact_mean_difference(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> float:
    """``mean(b − a)``, computed in exact rational arithmetic when every value is a ratio of small integers.

    Per-episode accuracies are ``n_correct / n_query_total`` rounded to the nearest double. Summing their float
    differences leaves rounding residue (``1.85e-16`` instead of ``0`` when two runs have the same number of
    correct queries in all), which a table then prints as a difference. Each value is read back as the fraction
    with denominator at most 100,000 whose nearest double it is; the differences are summed exactly and rounded
    once, so equal totals give exactly ``0``. Values that are not such ratios fall back to the float mean.

    Args:
        a: ``(n,)`` per-episode values of the reference.
        b: ``(n,)`` per-episode values on the same episodes.

    Example:
        >>> exact_mean_difference([1 / 3, 2 / 3, 0.2], [2 / 3, 1 / 3, 0.2])
        0.0
    """
    d = _differences(a, b)

    def as_ratio(x: float) -> Fraction | None:
        fraction = Fraction(x).limit_denominator(_MAX_ACCURACY_DENOMINATOR)
        return fraction if float(fraction) == x else None

    values_a = [as_ratio(float(x)) for x in np.asarray(a, dtype=np.float64).ravel()]
    values_b = [as_ratio(float(x)) for x in np.asarray(b, dtype=np.float64).ravel()]
    if any(v is None for v in values_a) or any(v is None for v in values_b):
        return float(d.mean())
    return float((sum(values_b, Fraction(0)) - sum(values_a, Fraction(0))) / len(values_a))


def paired_t_test(a: Sequence[float] | np.ndarray, b: Sequence[float] | np.ndarray) -> tuple[float, int, float]:
    """Two-sided paired t-test of ``mean(b − a) = 0`` (``scipy.stats.ttest_1samp`` on the differences).

    Args:
        a: ``(n,)`` per-episode values of the reference.
        b: ``(n,)`` per-episode values on the same episodes, ``n ≥ 2``.

    Returns:
        ``(t, df, p)``. When every difference is equal the t statistic is ``0`` (all zero, ``p = 1``) or
        ``±inf`` (``p = 0``).

    Example:
        >>> t, df, p = paired_t_test([1, 2, 3, 4, 5.5], [1.1, 1.9, 2.5, 3.2, 4.0])
        >>> round(t, 4), df, round(p, 4)
        (-1.9849, 4, 0.1181)
    """
    d = _differences(a, b)
    n = int(d.size)
    if n < 2:
        raise ValueError(f"a paired t-test needs at least 2 paired episodes, got {n}")
    mean = float(d.mean())
    if float(np.ptp(d)) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # all differences equal up to rounding
        if abs(mean) <= 1e-12:
            return 0.0, n - 1, 1.0
        return math.copysign(math.inf, mean), n - 1, 0.0
    import scipy.stats  # here, not at the top: it takes 1-2 s to import and only comparisons need it

    result = scipy.stats.ttest_1samp(d, 0.0)
    return float(result.statistic), n - 1, float(result.pvalue)


def sign_flip_test(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 20_000,
    seed: int = 0,
) -> tuple[float, bool, int]:
    """Two-sided paired sign-flip permutation test of ``mean(b − a) = 0``.

    Under the null hypothesis each difference ``d_i`` is as likely to be ``+|d_i|`` as ``−|d_i|``. The statistic
    is ``|Σ d_i|``; the p-value is the fraction of sign patterns whose statistic is at least the observed one.
    With at most 16 non-zero differences all ``2^m`` patterns are enumerated (exact test; zero differences do
    not change the statistic). Otherwise ``n_resamples`` random patterns are drawn with a generator seeded by
    ``seed`` and ``p = (1 + #{extreme}) / (1 + n_resamples)``, which is never zero (Phipson and Smyth,
    "Permutation p-values should never be zero", Stat. Appl. Genet. Mol. Biol., 2010).

    This is ``scipy.stats.permutation_test((d,), statistic, permutation_type="samples")`` with the statistic
    ``|Σ d_i|`` and ``alternative="greater"`` (the tests check that their exact p-values are equal), written here
    for two reasons (docs/statistics.md): scipy draws its Monte Carlo patterns by another generator path, which
    would move the committed Monte Carlo p-values within their Monte Carlo error; and scipy counts ties up to a
    tolerance relative to the observed statistic, which misses them when ``Σ d_i`` is 0 in exact arithmetic
    but ~1e-17 in floating point. The tolerance here is absolute, ``1e-9 · max(1, Σ|d_i|)``.

    Args:
        a: ``(n,)`` per-episode values of the reference.
        b: ``(n,)`` per-episode values on the same episodes.
        n_resamples: random sign patterns for the Monte Carlo test.
        seed: seed of the Monte Carlo generator (the result is deterministic given the data and the seed).

    Returns:
        ``(p, exact, patterns_evaluated)``.

    Example:
        >>> sign_flip_test([0, 0, 0], [1, 1, 1])  # exact: 2 of 8 patterns reach |sum| = 3
        (0.25, True, 8)
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    d = _differences(a, b)
    nonzero = d[d != 0.0]
    m = int(nonzero.size)
    if m == 0:
        return 1.0, True, 1
    observed = abs(float(nonzero.sum()))
    tol = 1e-9 * max(1.0, float(np.abs(nonzero).sum()))  # float sums of the same numbers in another order
    if m <= _EXACT_MAX_NONZERO:
        patterns = ((np.arange(2**m)[:, None] >> np.arange(m)) & 1) * 2 - 1  # (2^m, m) of ±1
        stats = np.abs(patterns @ nonzero)
        return float(np.mean(stats >= observed - tol)), True, 2**m
    rng = np.random.default_rng(seed)
    extreme = 0
    chunk = 2_000
    done = 0
    while done < n_resamples:
        size = min(chunk, n_resamples - done)
        signs = rng.integers(0, 2, size=(size, m), dtype=np.int8) * 2 - 1
        extreme += int(np.count_nonzero(np.abs(signs @ nonzero) >= observed - tol))
        done += size
    return (1 + extreme) / (1 + n_resamples), False, n_resamples


def paired_comparison(
    a: Sequence[float] | np.ndarray,
    b: Sequence[float] | np.ndarray,
    *,
    n_resamples: int = 20_000,
    seed: int = 0,
) -> PairedComparison:
    """Compare B to A on identical episodes (``diff = B − A``; see the module docstring for the conventions).

    Args:
        a: ``(n,)`` per-episode accuracies of the reference run, ``n ≥ 2``.
        b: ``(n,)`` per-episode accuracies of the other run on the same episodes, in the same order.
        n_resamples: Monte Carlo sign patterns for the permutation test (when it is not exact).
        seed: seed of the permutation test.

    Returns:
        A :class:`PairedComparison`.
    """
    d = _differences(a, b)
    arr_a, arr_b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    t, df, p_t = paired_t_test(arr_a, arr_b)
    p_perm, exact, resamples = sign_flip_test(arr_a, arr_b, n_resamples=n_resamples, seed=seed)
    diff = mean_ci(d)
    tie_tol = 1e-12
    return PairedComparison(
        n=int(d.size),
        mean_a=float(arr_a.mean()),
        mean_b=float(arr_b.mean()),
        mean_diff=exact_mean_difference(arr_a, arr_b),
        ci95_diff=diff.ci95,
        t=t,
        df=df,
        p_t=p_t,
        p_perm=p_perm,
        perm_exact=exact,
        perm_resamples=resamples,
        wins=int(np.count_nonzero(d > tie_tol)),
        ties=int(np.count_nonzero(np.abs(d) <= tie_tol)),
        losses=int(np.count_nonzero(d < -tie_tol)),
    )


@dataclass(frozen=True)
class HierarchicalCI:
    """Mean over seeds of per-seed mean accuracies, with an interval over seeds and episodes.

    Attributes:
        mean: mean over seeds of the per-seed means (the grand mean: every seed has the same episodes).
        low, high: the interval's bounds: the 2.5% and 97.5% percentiles of the bootstrap means, widened to
            contain the t-interval of :func:`crossed_t_interval` when there are several seeds.
        ci95: half-width ``(high − low) / 2`` (comparable with :attr:`MeanCI.ci95`).
        n_seeds: seeds (rows).
        n_episodes: episodes per seed (columns).
        n_resamples: bootstrap resamples.
    """

    mean: float
    low: float
    high: float
    ci95: float
    n_seeds: int
    n_episodes: int
    n_resamples: int

    def to_dict(self) -> dict[str, float | int]:
        return asdict(self)


def crossed_t_interval(values: np.ndarray) -> tuple[float, float]:
    """``(low, high)``: 95% t-interval of the grand mean of ``values[seed, episode]`` in the crossed design.

    Every seed is scored on the same ``E`` episodes, so ``x[s, e] = μ + a_s + b_e + r_se`` with a seed effect
    shared by a seed's episodes and an episode effect (its difficulty) shared by all seeds. The grand mean's
    variance has a seed term ``A = var(seed means)/S`` and an episode term ``B = var(episode means)/E`` (sample
    variances; each also holds ``σ²_r/(S·E)``, so their sum errs wide). Each term is scaled by its own Student-t
    quantile (:mod:`scipy.stats`): half-width ``√(t²_{S−1, .975} · A + t²_{E−1, .975} · B)``. With seeds
    dominating it is the t-interval over seed means that a seed-level bootstrap of 2-5 seeds lacks; with episodes
    dominating it is the episode interval. On synthetic crossed data (2-5 seeds, 600 episodes, seed, episode and
    residual spreads from 0 to 0.3) it covered the mean 95-99% of the time, where a single Welch–Satterthwaite
    quantile covered 92-96% (``tests/study/test_hierarchical_bootstrap.py`` checks its coverage).

    Args:
        values: ``(S, E)`` finite values, ``S ≥ 2``.

    Returns:
        ``(low, high)``; a zero-variance input gives ``(mean, mean)``.
    """
    import scipy.stats  # here, not at the top: it takes 1-2 s to import

    s, e = values.shape
    if s < 2:
        raise ValueError(f"the t-interval over seeds needs at least 2 seeds, got {s}")
    mean = float(values.mean())
    seed_term = float(values.mean(axis=1).var(ddof=1)) / s
    episode_term = float(values.mean(axis=0).var(ddof=1)) / e if e > 1 else 0.0
    t_seed = float(scipy.stats.t.ppf(0.975, s - 1))
    t_episode = float(scipy.stats.t.ppf(0.975, e - 1)) if e > 1 else 0.0
    half = math.sqrt(t_seed**2 * seed_term + t_episode**2 * episode_term)
    return mean - half, mean + half


def hierarchical_bootstrap(
    values: Sequence[Sequence[float]] | np.ndarray, *, n_resamples: int = 10_000, seed: int = 0, chunk: int = 500
) -> HierarchicalCI:
    """Interval of the mean of ``values[seed, episode]`` over training seeds and test episodes.

    A two-level percentile bootstrap for the **crossed** design the study has (every seed scored on the same
    ``E`` episodes): each resample draws ``S`` seeds with replacement and one set of ``E`` episode indices with
    replacement, **shared by the drawn seeds**, and takes the mean of the ``S × E`` drawn values. Sharing the
    episodes keeps their difficulty, common to all seeds, in the interval at its full ``σ²_ep/E``; drawing them
    anew for each seed (the nested design of Davison and Hinkley 1997, §3.8) would divide it by ``S`` and give
    intervals that narrow as seeds are added (fewshot 0.2.0 did that; its tables had one seed per cell, where the
    two designs draw the same numbers). With one seed it is the ordinary episode bootstrap (≈ ``1.96 · s / √E``);
    identical values give a zero-width interval. The generator is ``numpy.random.default_rng(seed)``, so a table
    made twice is identical.

    With few seeds the seed level can only reflect the seeds that were run (its variance is ``(S − 1)/S`` of the
    seed-to-seed variance, and three seeds give 10 distinct draws), so a percentile interval is too narrow when
    seeds differ more than episodes do. For ``S ≥ 2`` the interval is therefore widened to contain
    :func:`crossed_t_interval` (each variance term with its own Student-t quantile): the bootstrap's bounds where
    they are wider, the t bounds where those are.

    The draws are written here because ``scipy.stats.bootstrap`` resamples one level (the observations of each
    sample, independently); the interval is the plain percentile interval (``numpy.quantile``), since scipy's
    BCa correction is defined for that one-level design. For paired differences pass ``acc_B − acc_A`` on the
    same episodes.

    Args:
        values: ``(S, E)`` finite values; every seed scored on the same ``E`` episodes.
        n_resamples: bootstrap resamples.
        seed: seed of the generator.
        chunk: resamples drawn at once (memory ``chunk · S · E`` integers).

    Returns:
        A :class:`HierarchicalCI`.

    Example:
        >>> r = hierarchical_bootstrap([[0.5, 0.5], [0.5, 0.5]])
        >>> r.mean, r.ci95
        (0.5, 0.0)
    """
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim != 2 or arr.size == 0:
        raise ValueError(
            f"values must be a non-empty 2-D array (seeds, episodes) with the same episodes per seed, got shape "
            f"{arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError("values contain nan or inf; per-episode accuracies must be finite")
    if n_resamples < 1 or chunk < 1:
        raise ValueError(f"n_resamples and chunk must be >= 1, got {n_resamples} and {chunk}")
    s, e = arr.shape
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        b = min(chunk, n_resamples - start)
        seeds = rng.integers(0, s, size=(b, s, 1))
        episodes = rng.integers(0, e, size=(b, 1, e))  # one episode draw per resample, shared by its seeds
        means[start : start + b] = arr[seeds, episodes].mean(axis=(1, 2))
    mean = float(arr.mean(axis=1).mean())
    if float(np.ptp(arr)) == 0.0:  # every resample is the same number up to rounding: report it exactly
        mean = low = high = float(arr.flat[0])
    else:
        low, high = (float(v) for v in np.quantile(means, [0.025, 0.975]))
        if s >= 2:
            t_low, t_high = crossed_t_interval(arr)
            low, high = min(low, t_low), max(high, t_high)
    return HierarchicalCI(
        mean=mean, low=low, high=high, ci95=(high - low) / 2.0, n_seeds=s, n_episodes=e,
        n_resamples=n_resamples,
    )  # fmt: skip
