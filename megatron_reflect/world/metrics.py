"""The statistics every MedSafetyWorld figure is reported with.

Across seeds: the mean with a Student-t 95% interval; paired per-seed differences tested
one-sided with the exact sign-flip permutation test (all 2^n sign vectors; with n seeds
the smallest p is 1/2^n) and with the paired t-test; Holm's step-down correction over a
family of p-values.  Within a model: AUROC (ties count half).  Cost: microseconds, except
the sign-flip test (2^n means; n <= 20 is instant).
"""

from __future__ import annotations

import itertools
import math


def mean_ci(values: list[float]) -> tuple[float, float, float]:
    """Mean and a 95% Student-t interval (lo, hi) over seeds; a single value has no interval."""
    from scipy import stats

    vals = [v for v in values if not math.isnan(v)]
    if not vals:
        return math.nan, math.nan, math.nan
    m = sum(vals) / len(vals)
    if len(vals) < 2:
        return m, math.nan, math.nan
    sd = math.sqrt(sum((v - m) ** 2 for v in vals) / (len(vals) - 1))
    half = float(stats.t.ppf(0.975, len(vals) - 1)) * sd / math.sqrt(len(vals))
    return m, m - half, m + half


def sign_flip_p(diffs: list[float]) -> float:
    """Exact one-sided p of H1 "mean difference < 0": the share of the 2^n sign flips of the
    differences whose mean is <= the observed mean (the observed one included)."""
    d = [x for x in diffs if not math.isnan(x)]
    if not d:
        return math.nan
    observed = sum(d)
    hits = total = 0
    for signs in itertools.product((1.0, -1.0), repeat=len(d)):
        total += 1
        hits += sum(s * abs(x) for s, x in zip(signs, d)) <= observed + 1e-12
    return hits / total


def paired_t_p(diffs: list[float]) -> float:
    """One-sided p of the paired t-test, H1 "mean difference < 0" (nan with < 2 values; 0 or 1
    when every difference is equal)."""
    from scipy import stats

    d = [x for x in diffs if not math.isnan(x)]
    if len(d) < 2:
        return math.nan
    m = sum(d) / len(d)
    sd = math.sqrt(sum((x - m) ** 2 for x in d) / (len(d) - 1))
    if sd == 0.0:
        return 0.0 if m < 0 else 1.0
    t = m / (sd / math.sqrt(len(d)))
    return float(stats.t.cdf(t, len(d) - 1))


def holm(pvalues: list[float]) -> list[float]:
    """Holm-Bonferroni adjusted p-values (same order as given); any nan makes every one nan."""
    if any(math.isnan(p) for p in pvalues):
        return [math.nan] * len(pvalues)
    order = sorted(range(len(pvalues)), key=lambda i: pvalues[i])
    adjusted = [math.nan] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def auroc(scores: list[float], positives: list[bool]) -> float:
    """Area under the ROC curve (ties count half); nan without both classes."""
    pos = sorted(s for s, p in zip(scores, positives) if p)
    neg = sorted(s for s, p in zip(scores, positives) if not p)
    if not pos or not neg:
        return math.nan
    import bisect

    wins = 0.0
    for p in pos:
        lo, hi = bisect.bisect_left(neg, p), bisect.bisect_right(neg, p)
        wins += lo + 0.5 * (hi - lo)
    return wins / (len(pos) * len(neg))
