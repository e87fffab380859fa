"""Small-sample statistics of a study: means over seeds with Student-t confidence intervals, paired
differences and what their intervals say in words, and rank agreement (Kendall tau-b, top-quartile
overlap) with percentile-bootstrap intervals."""

from __future__ import annotations

import math

import numpy as np

# Two-sided 95% quantiles of Student's t, t_{0.975, df}, for df = 1..30; beyond, the normal 1.96.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145,
         2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048,
         2.045, 2.042)


def t_quantile_975(df: int) -> float:
    if df < 1:
        raise ValueError("a confidence interval needs at least two values")
    return _T975[df - 1] if df <= len(_T975) else 1.96


def mean_ci(values) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t, sample standard deviation);
    nan half-width for a single value."""
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return math.nan, math.nan
    mean = sum(values) / n
    if n == 1:
        return mean, math.nan
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
    return mean, t_quantile_975(n - 1) * sd / math.sqrt(n)


def format_ci(mean: float, half: float, digits: int = 2) -> str:
    return f"{mean:.{digits}f}" if math.isnan(half) else f"{mean:.{digits}f} ± {half:.{digits}f}"


def paired_difference(a: dict, b: dict) -> dict | None:
    """``a - b`` over the keys (seeds) both have: the per-key differences, their mean and the half-width
    of its 95% interval (nan with one pair); None when no key is shared."""
    keys = sorted(set(a) & set(b))
    if not keys:
        return None
    diffs = [float(a[k]) - float(b[k]) for k in keys]
    mean, half = mean_ci(diffs)
    return {"mean": mean, "half": half, "n": len(diffs), "differences": diffs}


def compare(mean: float, half: float, unit: str = "points", digits: int = 2) -> str:
    """What an interval ``mean +- half`` of a difference says, in words: "better by lo to hi", "worse
    by lo to hi", or "indistinguishable within x" (the interval holds 0 and lies within +-x)."""
    if math.isnan(half):
        return f"{mean:+.{digits}f} {unit} from one seed (no interval)"
    lo, hi = mean - half, mean + half
    if lo > 0:
        return f"better by {lo:.{digits}f} to {hi:.{digits}f} {unit}"
    if hi < 0:
        return f"worse by {-hi:.{digits}f} to {-lo:.{digits}f} {unit}"
    return f"indistinguishable within {max(-lo, hi):.{digits}f} {unit}"


def kendall_tau_b(a, b) -> float:
    """Kendall's tau-b of two score vectors: (concordant - discordant) pairs over the geometric mean
    of the pairs not tied in each vector; nan when either vector is constant."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"kendall_tau_b needs two vectors of one length, got {a.shape} and {b.shape}")
    i, j = np.triu_indices(len(a), k=1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    s = da * db
    concordant, discordant = int((s > 0).sum()), int((s < 0).sum())
    untied_a, untied_b = int((da != 0).sum()), int((db != 0).sum())
    if untied_a == 0 or untied_b == 0:
        return math.nan
    return (concordant - discordant) / math.sqrt(untied_a * untied_b)


def top_overlap(scores, truth, fraction: float = 0.25) -> float:
    """The share of the top ``fraction`` by ``truth`` (at least one item) that is also in the top
    ``fraction`` by ``scores``; ties are broken by position, the same way in both."""
    scores, truth = np.asarray(scores, float), np.asarray(truth, float)
    if scores.shape != truth.shape or scores.ndim != 1 or len(scores) == 0:
        raise ValueError(f"top_overlap needs two non-empty vectors of one length, got {scores.shape} and {truth.shape}")
    k = max(1, int(round(fraction * len(scores))))
    top_scores = set(np.argsort(-scores, kind="stable")[:k].tolist())
    top_truth = set(np.argsort(-truth, kind="stable")[:k].tolist())
    return len(top_scores & top_truth) / k


def bootstrap_ci(statistic, n: int, resamples: int = 2000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of ``statistic(indices)`` over ``n`` items resampled with
    replacement (``resamples`` times, a generator seeded with ``seed``); resamples where the
    statistic is undefined (nan) are left out; (nan, nan) when none is defined."""
    rng = np.random.default_rng(seed)
    values = np.array([statistic(rng.integers(0, n, n)) for _ in range(resamples)], float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return math.nan, math.nan
    tail = (1 - level) / 2
    return float(np.quantile(values, tail)), float(np.quantile(values, 1 - tail))
