"""Means with 95% confidence intervals over seeds (dfnas.stats), against hand values."""

import math

import pytest

import numpy as np

from dfnas.stats import (
    bootstrap_ci,
    compare,
    format_ci,
    kendall_tau_b,
    mean_ci,
    paired_difference,
    t_quantile_975,
    top_overlap,
)


def test_mean_ci_by_hand():
    mean, half = mean_ci([1.0, 2.0, 3.0])  # sd 1, t(0.975, 2) = 4.303
    assert mean == 2.0 and half == pytest.approx(4.303 / math.sqrt(3))
    mean, half = mean_ci([81.5, 79.0])  # sd 1.7678, t(0.975, 1) = 12.706
    assert mean == 80.25 and half == pytest.approx(12.706 * 1.76777 / math.sqrt(2), rel=1e-4)
    assert mean_ci([5.0])[0] == 5.0 and math.isnan(mean_ci([5.0])[1])
    assert all(math.isnan(v) for v in mean_ci([]))


def test_t_quantiles_and_formatting():
    assert t_quantile_975(1) == 12.706 and t_quantile_975(30) == 2.042 and t_quantile_975(100) == 1.96
    with pytest.raises(ValueError, match="at least two values"):
        t_quantile_975(0)
    assert format_ci(0.8591, 0.0123, 3) == "0.859 ± 0.012" and format_ci(1.5, math.nan) == "1.50"


def test_kendall_tau_by_hand():
    assert kendall_tau_b([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert kendall_tau_b([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    # 1,2,3 vs 1,3,2: pairs (1,2) +, (1,3) +, (2,3) -  ->  (2 - 1) / 3
    assert kendall_tau_b([1, 2, 3], [1, 3, 2]) == pytest.approx(1 / 3)
    # Ties (tau-b): x = 12,2,1,12,2; y = 1,4,7,1,0. Of the 10 pairs, x ties 2 and y ties 1
    # (the pair (0, 3) is tied in both); concordant 2, discordant 6 ->
    # (2 - 6) / sqrt((10 - 2) * (10 - 1)) = -4 / sqrt(72) = -0.4714... (scipy.stats.kendalltau agrees)
    assert kendall_tau_b([12, 2, 1, 12, 2], [1, 4, 7, 1, 0]) == pytest.approx(-4 / math.sqrt(72))
    assert math.isnan(kendall_tau_b([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError, match="one length"):
        kendall_tau_b([1, 2], [1, 2, 3])



def test_paired_difference_uses_shared_seeds_only():
    d = paired_difference({0: 80.0, 1: 82.0, 2: 81.0, 3: 70.0}, {0: 79.0, 1: 80.0, 2: 81.0})
    assert d["n"] == 3 and d["differences"] == [1.0, 2.0, 0.0]  # seed 3 has no pair
    assert d["mean"] == 1.0 and d["half"] == pytest.approx(4.303 * 1.0 / math.sqrt(3))
    assert paired_difference({0: 1.0}, {1: 2.0}) is None
    one = paired_difference({0: 3.0}, {0: 1.0})
    assert one["mean"] == 2.0 and math.isnan(one["half"])


def test_compare_reads_the_interval():
    assert compare(1.0, 0.4) == "better by 0.60 to 1.40 points"
    assert compare(-1.0, 0.4) == "worse by 0.60 to 1.40 points"
    assert compare(0.1, 0.3) == "indistinguishable within 0.40 points"  # [-0.2, 0.4]
    assert compare(-0.3, 0.5) == "indistinguishable within 0.80 points"  # [-0.8, 0.2]
    assert compare(0.25, math.nan) == "+0.25 points from one seed (no interval)"


def test_top_overlap_by_hand():
    truth = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]  # top quarter: items 0 and 1
    assert top_overlap([8, 7, 6, 5, 4, 3, 2, 1], truth) == 1.0
    assert top_overlap([8, 1, 6, 5, 4, 3, 2, 7], truth) == 0.5  # top by scores: 0 and 7
    assert top_overlap([1, 2, 3, 4, 5, 6, 7, 8], truth) == 0.0
    assert top_overlap([3, 2, 1], [1, 2, 3], fraction=0.25) == 0.0  # at least one item: 0 vs 2
    with pytest.raises(ValueError, match="one length"):
        top_overlap([1, 2], [1, 2, 3])


def test_bootstrap_interval_of_a_mean_matches_its_spread():
    x = np.random.default_rng(1).normal(0.0, 1.0, 400)
    lo, hi = bootstrap_ci(lambda idx: x[idx].mean(), len(x), resamples=2000, seed=0)
    se = x.std(ddof=1) / math.sqrt(len(x))  # the normal interval is mean +- 1.96 se
    assert lo == pytest.approx(x.mean() - 1.96 * se, abs=0.3 * se)
    assert hi == pytest.approx(x.mean() + 1.96 * se, abs=0.3 * se)
    assert bootstrap_ci(lambda idx: x[idx].mean(), len(x), seed=0) == bootstrap_ci(lambda idx: x[idx].mean(),
                                                                                 len(x), seed=0)


def test_bootstrap_of_kendall_tau_skips_undefined_resamples():
    # Two items: a resample that draws one item twice has a constant vector (tau undefined).
    a, b = np.array([1.0, 2.0]), np.array([1.0, 2.0])
    lo, hi = bootstrap_ci(lambda idx: kendall_tau_b(a[idx], b[idx]), 2, resamples=200, seed=0)
    assert lo == hi == 1.0
    same = np.array([1.0, 1.0])
    assert all(math.isnan(v) for v in bootstrap_ci(lambda idx: kendall_tau_b(same[idx], b[idx]), 2, resamples=50))
