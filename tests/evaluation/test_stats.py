"""Tests of fewshot.evaluation.stats against closed forms and reference values.

Reference values marked "scipy 1.17.1" were computed once, offline, with scipy.stats / scipy.special
(scipy is not a dependency of fewshot) and are hard-coded here.
"""

import math

import numpy as np
import pytest

from fewshot.evaluation.stats import (
    mean_ci,
    paired_comparison,
    paired_t_test,
    regularized_incomplete_beta,
    sign_flip_test,
    student_t_cdf,
    t_test_two_sided_p,
)


def test_mean_ci_uses_sample_std_and_1_96():
    values = [0.6, 0.8, 1.0, 0.4]
    r = mean_ci(values)
    s = math.sqrt(sum((v - 0.7) ** 2 for v in values) / 3)  # ddof = 1
    assert r.mean == pytest.approx(0.7)
    assert r.std == pytest.approx(s)
    assert r.ci95 == pytest.approx(1.96 * s / 2.0)
    assert r.n == 4


def test_mean_ci_single_value_has_undefined_interval():
    r = mean_ci([0.8])
    assert r.mean == 0.8 and r.n == 1
    assert math.isnan(r.std) and math.isnan(r.ci95)


@pytest.mark.parametrize("bad, match", [([], "empty"), ([0.5, float("nan")], "non-finite"), ([[1, 2]], "1-D")])
def test_mean_ci_rejects_bad_input(bad, match):
    with pytest.raises(ValueError, match=match):
        mean_ci(bad)


@pytest.mark.parametrize(
    "a, b, x, expected",
    [
        (2.0, 3.0, 0.4, 0.5248),  # closed form: polynomial
        (0.5, 0.5, 0.3, 0.36901011956554536),  # scipy 1.17.1 = 2/pi * asin(sqrt(0.3))
        (5.0, 0.5, 0.9, 0.3166429150200122),  # scipy 1.17.1
        (300.0, 0.5, 0.99, 0.014103172217926252),  # scipy 1.17.1
        (0.5, 300.0, 0.01, 0.9858968277820737),  # scipy 1.17.1
    ],
)
def test_regularized_incomplete_beta_matches_reference(a, b, x, expected):
    assert regularized_incomplete_beta(a, b, x) == pytest.approx(expected, rel=1e-10, abs=1e-14)


def test_regularized_incomplete_beta_arcsine_closed_form():
    for x in (0.01, 0.2, 0.5, 0.77, 0.999):
        assert regularized_incomplete_beta(0.5, 0.5, x) == pytest.approx(2 / math.pi * math.asin(math.sqrt(x)))


def test_regularized_incomplete_beta_rejects_out_of_range():
    with pytest.raises(ValueError, match="0 <= x <= 1"):
        regularized_incomplete_beta(1.0, 1.0, 1.5)
    with pytest.raises(ValueError, match="a > 0 and b > 0"):
        regularized_incomplete_beta(0.0, 1.0, 0.5)


@pytest.mark.parametrize(
    "t, df, p",
    [
        (2.0, 10, 0.07338803477074037),  # the textbook value 0.0734
        (0.5, 3, 0.651447964848151),
        (1.0, 1, 0.5),  # Cauchy
        (-2.5, 29, 0.018325344338426086),
        (3.7, 599, 0.00023545281667372667),
        (10.0, 4, 0.000562003622715991),
        (1.96, 1000, 0.050273184955748736),
        (0.1, 2, 0.9294654384141402),
        (0.0, 5, 1.0),
    ],
)
def test_two_sided_t_p_value_matches_scipy(t, df, p):  # scipy 1.17.1: 2 * stats.t.sf(|t|, df)
    assert t_test_two_sided_p(t, df) == pytest.approx(p, rel=1e-9, abs=1e-15)


def test_two_sided_p_far_tail_keeps_relative_precision():
    assert t_test_two_sided_p(25.0, 599) == pytest.approx(5.0945395031703676e-95, rel=1e-6)  # scipy 1.17.1


def test_student_t_cdf_is_symmetric_and_matches_scipy():
    assert student_t_cdf(2.0, 10) == pytest.approx(0.9633059826146299, rel=1e-12)  # scipy 1.17.1
    assert student_t_cdf(-2.0, 10) == pytest.approx(1 - 0.9633059826146299, rel=1e-10)
    assert student_t_cdf(0.0, 7) == 0.5


def test_paired_t_test_matches_scipy_ttest_rel():
    t, df, p = paired_t_test([1, 2, 3, 4, 5.5], [1.1, 1.9, 2.5, 3.2, 4.0])
    assert (t, df) == (pytest.approx(-1.9848673740233402), 4)  # scipy 1.17.1 ttest_rel(b, a); t of b - a
    assert p == pytest.approx(0.11814194091935622, rel=1e-9)


def test_paired_t_test_constant_differences():
    assert paired_t_test([0.5, 0.6], [0.5, 0.6]) == (0.0, 1, 1.0)
    t, df, p = paired_t_test([0.5, 0.6, 0.7], [0.6, 0.7, 0.8])
    assert t == math.inf and df == 2 and p == 0.0


def test_paired_tests_reject_unequal_lengths():
    with pytest.raises(ValueError, match="equal length"):
        paired_t_test([0.1, 0.2], [0.1, 0.2, 0.3])
    with pytest.raises(ValueError, match="at least 2"):
        paired_t_test([0.1], [0.2])


def test_sign_flip_exact_matches_scipy_permutation_test():
    d = [0.1, -0.05, 0.2, 0.0, 0.15, 0.05, -0.1, 0.3]
    p, exact, patterns = sign_flip_test(np.zeros(8), d)
    assert exact and patterns == 2**7  # the zero difference is not flipped
    assert p == 0.171875  # scipy 1.17.1 permutation_test(samples, two-sided, exact) = 22/128


def test_sign_flip_all_equal_is_one():
    assert sign_flip_test([0.2, 0.4], [0.2, 0.4]) == (1.0, True, 1)


def test_sign_flip_monte_carlo_is_seeded_and_close_to_reference():
    rng = np.random.default_rng(5)
    d = rng.normal(0.02, 0.1, 40).round(2)
    p1, exact, n = sign_flip_test(np.zeros(40), d, n_resamples=20_000, seed=3)
    p2, _, _ = sign_flip_test(np.zeros(40), d, n_resamples=20_000, seed=3)
    assert not exact and n == 20_000 and p1 == p2
    # scipy 1.17.1 permutation_test with 200000 resamples gave 0.3433; the MC error of 20000 resamples is 0.0034.
    assert p1 == pytest.approx(0.3433, abs=0.015)


def test_sign_flip_monte_carlo_p_is_never_zero():
    p, exact, n = sign_flip_test(np.zeros(30), np.ones(30), n_resamples=100, seed=0)
    assert not exact and p == pytest.approx(1 / 101)


def test_paired_comparison_counts_and_direction():
    a = np.array([0.8, 0.6, 0.6, 1.0, 0.4])
    b = np.array([1.0, 0.6, 0.8, 0.8, 0.8])
    r = paired_comparison(a, b)
    d = b - a
    assert r.mean_diff == pytest.approx(d.mean()) and r.mean_diff > 0
    assert r.ci95_diff == pytest.approx(1.96 * d.std(ddof=1) / math.sqrt(5))
    assert (r.wins, r.ties, r.losses) == (3, 1, 1)
    assert r.n == 5 and r.df == 4
    assert r.mean_a == pytest.approx(0.68) and r.mean_b == pytest.approx(0.8)
    # exact: non-zero differences (0.2, 0.2, -0.2, 0.4); |sum| >= 0.6 in 8 of 16 patterns (4 per sign of 0.4)
    assert r.perm_exact and r.p_perm == pytest.approx(8 / 16)
    assert r.p_t == pytest.approx(t_test_two_sided_p(r.t, 4))
