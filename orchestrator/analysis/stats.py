"""The statistics behind every interval llem reports (one definition each).

- `describe`: mean, sample std, coefficient of variation and a two-sided 95%
  Student-t interval of the mean across cycles.
- `ratio`: mean(A) / mean(B) with a 95% interval from the delta method on the log
  scale with Welch–Satterthwaite degrees of freedom. Ratios are what a reader
  compares ("0.31x the energy per token"); the log scale keeps the interval
  positive and symmetric in fold-change.
- `difference`: mean(B) - mean(A) with a Welch 95% interval, for comparing the
  same configuration across two studies.
Fewer than two values give no interval (None), never a made-up one.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from llenergymeasure.orchestrator.study import precision


def is_missing(v: object) -> bool:
    """None, NaN or pandas' NA: a value the tables show as n/a."""
    return v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v))

LEVEL = precision.LEVEL
_clean = precision.clean
_t = precision.t_quantile  # the one Student-t quantile (study/precision.py; n_cycles: auto stops on it too)


@dataclass(frozen=True)
class Described:
    n: int
    mean: float | None
    std: float | None
    cv: float | None  # std / |mean|
    ci_low: float | None
    ci_high: float | None


def describe(values: Iterable[float | None]) -> Described:
    xs = _clean(values)
    n = len(xs)
    if n == 0:
        return Described(0, None, None, None, None, None)
    mean = sum(xs) / n
    if n == 1:
        return Described(1, mean, None, None, None, None)
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    half = precision.half_width(std, n)
    cv = std / abs(mean) if mean else None
    return Described(n, mean, std, cv, mean - half, mean + half)


@dataclass(frozen=True)
class Interval:
    estimate: float | None
    low: float | None
    high: float | None

    def excludes(self, null: float) -> bool | None:
        """Whether the interval lies wholly on one side of `null` (0 for a difference,
        1 for a ratio); None when there is no interval."""
        if self.low is None or self.high is None:
            return None
        return self.low > null or self.high < null


def _welch_df(va: float, vb: float, na: int, nb: int) -> float:
    # va, vb: variances of the two means (s^2/n)
    num = (va + vb) ** 2
    den = (va**2 / (na - 1) if na > 1 else 0.0) + (vb**2 / (nb - 1) if nb > 1 else 0.0)
    return num / den if den > 0 else float(max(na + nb - 2, 1))


def ratio(a: Iterable[float | None], b: Iterable[float | None]) -> Interval:
    """mean(a) / mean(b) with its 95% interval (delta method, log scale, Welch df)."""
    da, db = describe(a), describe(b)
    if da.mean is None or db.mean is None or db.mean == 0:
        return Interval(None, None, None)
    r = da.mean / db.mean
    if da.std is None or db.std is None or da.mean <= 0 or db.mean <= 0:
        return Interval(r, None, None)
    # var(log mean) ~ s^2 / (n mean^2)
    va = da.std**2 / (da.n * da.mean**2)
    vb = db.std**2 / (db.n * db.mean**2)
    if va + vb == 0:
        return Interval(r, r, r)
    half = _t(_welch_df(va, vb, da.n, db.n)) * math.sqrt(va + vb)
    return Interval(r, r * math.exp(-half), r * math.exp(half))


def difference(a: Iterable[float | None], b: Iterable[float | None]) -> Interval:
    """mean(b) - mean(a) with its Welch 95% interval."""
    da, db = describe(a), describe(b)
    if da.mean is None or db.mean is None:
        return Interval(None, None, None)
    d = db.mean - da.mean
    if da.std is None or db.std is None:
        return Interval(d, None, None)
    va, vb = da.std**2 / da.n, db.std**2 / db.n
    if va + vb == 0:
        return Interval(d, d, d)
    half = _t(_welch_df(va, vb, da.n, db.n)) * math.sqrt(va + vb)
    return Interval(d, d - half, d + half)
