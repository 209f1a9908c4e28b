"""Statistics over repeated runs (seeds): the mean and its 95% confidence interval.

Student's t quantile is computed here from its closed-form CDF for integer degrees of
freedom, so that no SciPy is needed.  compare and classify report with it.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

import numpy as np


def student_t_975(df: int) -> float:
    """The 97.5% quantile of Student's t with df degrees of freedom (two-sided 95%), solved
    from the closed-form CDF for integer df (Abramowitz & Stegun 26.7.3-4) by bisection."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")

    def central(t: float) -> float:   # P(|T| < t)
        theta = math.atan(t / math.sqrt(df))
        s, c2 = math.sin(theta), math.cos(theta) ** 2
        if df % 2:
            if df == 1:
                return 2 * theta / math.pi
            term, acc = math.cos(theta), math.cos(theta)
            for k in range(3, df - 1, 2):
                term *= c2 * (k - 1) / k
                acc += term
            return 2 / math.pi * (theta + s * acc)
        term, acc = 1.0, 1.0
        for k in range(2, df - 1, 2):
            term *= c2 * (k - 1) / k
            acc += term
        return s * acc

    lo, hi = 0.0, 1000.0
    for _ in range(200):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if central(mid) < 0.95 else (lo, mid)
    return (lo + hi) / 2


def mean_ci(values: Sequence[float]) -> tuple[float, Optional[float]]:
    """(mean, half-width of its 95% confidence interval): Student t with n - 1 degrees of
    freedom on the sample standard deviation (ddof 1); None with one value."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2:
        return float(v.mean()), None
    return float(v.mean()), student_t_975(len(v) - 1) * float(v.std(ddof=1)) / math.sqrt(len(v))
