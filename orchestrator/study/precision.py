"""How precise a configuration's mean is after its cycles, and when `n_cycles: auto` has run
enough of them.

The precision of a mean across cycles is the half-width of its two-sided 95% Student-t
confidence interval, t(0.975, n-1) * s / sqrt(n); `ci_half_width_pct` gives it as a
percentage of the mean. It is the interval the summary reports (analysis/stats.py builds
on `t_quantile` and `half_width`), and the one `n_cycles: auto` stops on
(execution/auto_cycles.py). It lives in study/ because execution (which decides whether
to run another cycle) and analysis (which reports the interval and flags a target not
met) may both import from here, never from each other: one definition for both.

`judge` is the stopping rule, a pure function of a configuration's samples so that its
convergence can be tested on draws of known variance. A configuration stops when the
interval of every judged metric (output throughput, and energy per output token where it
was measured) is within the target, or at `max_cycles` (flagged `ci_target_not_met`), or
when one of its runs failed (more cycles do not mend a failing configuration; its
failures are flagged, and `--resume --retry-failed` runs them again).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

LEVEL = 0.95
AUTO = "auto"
AUTO_FIRST_CYCLES = 3  # cycles every configuration of an auto study runs before any decision
DEFAULT_TARGET_CI_PCT = 5.0
DEFAULT_MAX_CYCLES = 10

THROUGHPUT = "output_tokens_per_s"
ENERGY = "energy_per_output_token_j"
# what `n_cycles: auto` judges, in the order its messages name them
JUDGED: tuple[tuple[str, str], ...] = ((THROUGHPUT, "throughput"), (ENERGY, "energy per token"))
NAMES = dict(JUDGED)


@functools.lru_cache(maxsize=256)
def t_quantile(df: float) -> float:
    """The two-sided 95% Student-t quantile for `df` degrees of freedom (cached: a site
    build over a large archive asks for the same few quantiles thousands of times, and each
    scipy call costs far more than the arithmetic around it)."""
    from scipy import stats as _st  # here: scipy.stats costs ~1 s to import, and most commands never need it

    return float(_st.t.ppf(0.5 + LEVEL / 2, df))


def half_width(std: float, n: int) -> float:
    """The 95% confidence interval's half-width of a mean of `n` values with sample std `std`."""
    return t_quantile(n - 1) * std / math.sqrt(n)


def clean(values: Iterable[float | None]) -> list[float]:
    """The numbers among `values` (None and NaN left out: a metric a run did not measure)."""
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def ci_half_width_pct(values: Iterable[float | None]) -> float | None:
    """The 95% CI half-width of the mean of `values` as a percentage of that mean; None with
    fewer than two values or a zero mean (no interval can be given, so none is made up)."""
    xs = clean(values)
    n = len(xs)
    if n < 2:
        return None
    mean = sum(xs) / n
    if mean == 0:
        return None
    std = math.sqrt(sum((x - mean) ** 2 for x in xs) / (n - 1))
    return 100.0 * half_width(std, n) / abs(mean)


def show_pct(pct: float | None) -> str:
    return "no interval" if pct is None else f"±{pct:.1f}%"


def not_met_flag(ci_pct: Mapping[str, float | None], target_pct: float, cycles: int) -> str | None:
    """`ci_target_not_met: throughput CI ±7.2% > 5% after 10 cycles`, or None when every
    metric in `ci_pct` (metric -> half-width %) is within the target. The summary shows it."""
    wide = [f"{NAMES.get(m, m)} CI {show_pct(p)}" for m, p in ci_pct.items() if p is None or p > target_pct]
    if not wide:
        return None
    return f"ci_target_not_met: {', '.join(wide)} > {target_pct:g}% after {cycles} cycles"


Decision = Literal["met", "more", "max_cycles", "failed"]


@dataclass(frozen=True)
class Verdict:
    """What `judge` decided for one configuration, and from what."""

    decision: Decision
    cycles: int  # cycles the configuration has run so far
    ci_pct: dict[str, float | None] = field(default_factory=dict)  # judged metric -> 95% CI half-width, % of mean
    unjudged: tuple[str, ...] = ()  # metrics no run of it measured (energy on a machine without a meter)
    flag: str | None = None  # ci_target_not_met, when it stops above the target

    @property
    def more(self) -> bool:
        return self.decision == "more"

    def describe(self) -> str:
        """`throughput ±2.1%, energy per token ±3.4%`, or `throughput ±2.1% (energy per token
        not measured)`: what was judged, and what could not be."""
        text = ", ".join(f"{NAMES.get(m, m)} {show_pct(p)}" for m, p in self.ci_pct.items())
        if self.unjudged:
            text += f" ({', '.join(NAMES.get(m, m) for m in self.unjudged)} not measured)"
        return text


def judge(samples: Mapping[str, Sequence[float | None]], cycles: int, target_pct: float, max_cycles: int,
          failed: int = 0) -> Verdict:
    """Whether a configuration needs one more cycle. `samples`: metric -> its finished runs'
    values (None where a run did not measure it); `cycles`: cycles it has run (finished or
    failed); `failed`: how many of them failed. A metric no run measured is not judged (on
    the CPU without RAPL: throughput alone); one measured by fewer than two runs has no
    interval, which does not meet any target."""
    ci = {m: ci_half_width_pct(v) for m, v in samples.items() if clean(v)}
    unjudged = tuple(m for m, v in samples.items() if not clean(v))
    flag = not_met_flag(ci, target_pct, cycles) if ci else f"ci_target_not_met: nothing measured after {cycles} cycles"
    if failed:
        return Verdict("failed", cycles, ci, unjudged, flag)
    if flag is None:
        return Verdict("met", cycles, ci, unjudged)
    if cycles >= max_cycles:
        return Verdict("max_cycles", cycles, ci, unjudged, flag)
    return Verdict("more", cycles, ci, unjudged)
