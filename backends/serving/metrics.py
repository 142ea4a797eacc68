"""Serving metrics: what a load adds to the offline definitions (harness/metrics.py).

TTFT, ITL, TPOT and E2E keep their one definition (harness/metrics.py), counted from a
request's *arrival at the workload*. In the serving scenario a request arrives at its
scheduled time (schedule.py), so its latencies include any wait for a client slot under
max_concurrency: the wait a user of the deployment sees. vLLM's serving benchmark counts
from when the request was sent instead; the send time is kept per request
(requests.parquet `submitted_s`) for that view.

Added here, one definition each:
- offered_request_rate_rps: (n - 1) / (last arrival - first arrival), the rate the
  realised schedule offered (None when every request arrives at once);
- achieved_request_rate_rps: (n - 1) / (last completion - first completion), the rate at
  which the deployment finished them; for an `inf` load, its capacity;
- goodput_rps: requests meeting every target of serving.slo / the load's duration (the
  measured window: first arrival to last completion); slo_met_share: their share;
- saturation (`saturated`): the deployment fell behind the load: the achieved rate is more
  than RATE_MARGIN below the offered one, or TTFT keeps growing through the load (a
  Mann-Kendall trend test of TTFT against arrival time, significant at TREND_ALPHA, and a
  Theil-Sen rise over the load of at least TREND_MIN_RISE of the median TTFT, so that a
  significant drift of a few milliseconds is not called saturation). Not assessed for an
  `inf` load: every request is queued at once by design, which measures capacity;
- client_send_lag_ms_p99: how late the client sent requests that had a free slot, against
  their schedule: what the load generator itself added (benchmarks/serving_client_cost.py);
- per-request energy: the window's energy apportioned to requests by output tokens
  (requests.parquet `energy_j_token_apportioned`), an attribution, not a measurement.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from llenergymeasure.backends.harness.metrics import e2e_s, itl_s, tpot_s, ttft_s
from llenergymeasure.backends.registry import RequestRecord
from llenergymeasure.backends.serving.config import ServingConfig, SloConfig

RATE_MARGIN = 0.10  # achieved below offered by more than this share: saturated
TREND_ALPHA = 0.01  # one-sided significance of the TTFT trend
TREND_MIN_RISE = 0.5  # the trend's rise over the load, as a share of the median TTFT
TREND_MAX_POINTS = 2000  # the test's pairs grow as n^2: evenly spaced requests beyond this
MIN_REQUESTS = 3


def meets_slo(r: RequestRecord, slo: SloConfig) -> bool:
    """Whether one request meets every target set (a request without output meets none)."""
    ttft, e2e = ttft_s(r), e2e_s(r)
    if ttft is None or e2e is None:
        return False
    tpot = tpot_s(r)
    gaps = itl_s(r)
    checks = {"ttft_ms": ttft, "e2e_ms": e2e, "tpot_ms": tpot if tpot is not None else 0.0,
              "itl_ms": max(gaps) if gaps else 0.0}
    return all(checks[k] * 1000.0 <= target for k, target in slo.targets().items())


@dataclass(frozen=True)
class Trend:
    """Mann-Kendall test for an upward trend of y over x, with the Theil-Sen slope."""

    n: int
    p_value: float  # one-sided: the chance of a statistic this high without a trend
    slope: float  # Theil-Sen: median of pairwise slopes (y units per x unit)


def _thin(x: np.ndarray, y: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    if len(x) <= limit:
        return x, y
    keep = np.linspace(0, len(x) - 1, limit).round().astype(int)
    return x[keep], y[keep]


def mann_kendall(x: list[float], y: list[float], max_points: int = TREND_MAX_POINTS) -> Trend | None:
    """The trend of y against x (pairs ordered by x), or None under MIN_REQUESTS points.
    S = sum over pairs i < j of sign(y_j - y_i) (pairs tied in x count 0); its variance
    under no trend, corrected for ties in y, gives a normal z with continuity correction."""
    order = np.argsort(np.asarray(x, dtype=float), kind="stable")
    xs, ys = _thin(np.asarray(x, dtype=float)[order], np.asarray(y, dtype=float)[order], max_points)
    n = len(xs)
    if n < MIN_REQUESTS:
        return None
    s, slopes = 0.0, []
    for i in range(n - 1):
        dx, dy = xs[i + 1:] - xs[i], ys[i + 1:] - ys[i]
        valid = dx > 0
        s += float(np.sign(dy[valid]).sum())
        slopes.append(dy[valid] / dx[valid])
    _, counts = np.unique(ys, return_counts=True)
    var = (n * (n - 1) * (2 * n + 5) - float(np.sum(counts * (counts - 1) * (2 * counts + 5)))) / 18.0
    z = (s - 1) / math.sqrt(var) if s > 0 and var > 0 else 0.0 if s == 0 or var <= 0 else (s + 1) / math.sqrt(var)
    p = 0.5 * math.erfc(z / math.sqrt(2))
    all_slopes = np.concatenate(slopes) if slopes else np.array([])
    return Trend(n=n, p_value=p, slope=float(np.median(all_slopes)) if all_slopes.size else 0.0)


@dataclass(frozen=True)
class Saturation:
    saturated: bool | None  # None: not assessed (an inf load, too few requests)
    detail: str
    offered_rps: float | None
    achieved_rps: float | None
    trend: Trend | None


def _rate(times: list[float]) -> float | None:
    span = max(times) - min(times) if times else 0.0
    return (len(times) - 1) / span if len(times) >= 2 and span > 0 else None


def saturation(records: list[RequestRecord], serving: ServingConfig) -> Saturation:
    """Whether the deployment kept up with the load (module docstring)."""
    done = [r for r in records if r.token_times_s]
    arrivals = [r.arrival_s for r in done if r.arrival_s is not None]
    offered = None if serving.all_at_once else _rate(arrivals)
    achieved = _rate([r.token_times_s[-1] for r in done])
    if serving.all_at_once:
        return Saturation(None, "not assessed: every request arrives at once (request_rate: inf), so the run "
                                "measures capacity, not whether the deployment keeps up", offered, achieved, None)
    if len(done) < MIN_REQUESTS or offered is None:
        return Saturation(None, f"not assessed: {len(done)} request(s), fewer than {MIN_REQUESTS}",
                          offered, achieved, None)
    ttfts = [ttft_s(r) for r in done]
    trend = mann_kendall(arrivals, [t * 1000.0 for t in ttfts if t is not None])
    reasons = []
    if achieved is not None and achieved < offered * (1 - RATE_MARGIN):
        reasons.append(f"achieved {achieved:.3g} requests/s of {offered:.3g} offered "
                       f"({achieved / offered:.0%}, under {1 - RATE_MARGIN:.0%})")
    if trend is not None:
        median = float(np.median([t * 1000.0 for t in ttfts if t is not None]))
        rise = trend.slope * (max(arrivals) - min(arrivals))
        if trend.p_value < TREND_ALPHA and rise >= TREND_MIN_RISE * median:
            reasons.append(f"TTFT grew {trend.slope:.3g} ms per second of load ({rise:.0f} ms over it, median "
                           f"{median:.0f} ms; Mann-Kendall p = {trend.p_value:.2g})")
    if reasons:
        return Saturation(True, "; ".join(reasons), offered, achieved, trend)
    p = f", TTFT trend p = {trend.p_value:.2g}" if trend else ""
    achieved_text = f"{achieved:.3g}" if achieved is not None else "n/a"
    return Saturation(False, f"kept up: achieved {achieved_text} of {offered:.3g} requests/s{p}",
                      offered, achieved, trend)


def send_lag_ms_p99(records: list[RequestRecord], slot_waits: list[bool]) -> float | None:
    """p99 of (sent - scheduled) over requests that did not wait for a slot."""
    lags = [(r.submitted_s - r.arrival_s) * 1000.0 for r, waited in zip(records, slot_waits)
            if not waited and r.arrival_s is not None]
    return float(np.percentile(lags, 99)) if lags else None


def apportioned_energy_j(records: list[RequestRecord], energy_j: float | None) -> list[float | None]:
    """The window's energy shared out over requests in proportion to their output tokens."""
    total = sum(r.output_tokens for r in records)
    if energy_j is None or energy_j <= 0 or total == 0:
        return [None] * len(records)
    return [energy_j * r.output_tokens / total for r in records]


def serving_fields(records: list[RequestRecord], serving: ServingConfig, duration_s: float,
                   slot_waits: list[bool]) -> tuple[dict[str, float | bool | None], Saturation]:
    """The Metrics fields of a serving run (harness/metrics.py declares them), and the
    saturation assessment they came from."""
    sat = saturation(records, serving)
    met = sum(meets_slo(r, serving.slo) for r in records) if serving.slo else None
    return {
        "offered_request_rate_rps": sat.offered_rps,
        "achieved_request_rate_rps": sat.achieved_rps,
        "goodput_rps": met / duration_s if met is not None and duration_s > 0 else None,
        "slo_met_share": met / len(records) if met is not None and records else None,
        "saturated": sat.saturated,
        "ttft_trend_p_value": sat.trend.p_value if sat.trend else None,
        "ttft_trend_ms_per_s": sat.trend.slope if sat.trend else None,
        "client_send_lag_ms_p99": send_lag_ms_p99(records, slot_waits),
    }, sat
