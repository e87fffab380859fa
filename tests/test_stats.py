"""Means with 95% confidence intervals over seeds (dfnas.stats), against hand values."""

import math

import pytest

from dfnas.stats import format_ci, mean_ci, t_quantile_975


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
