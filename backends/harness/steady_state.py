"""Steady-state window for continuous-batching engines (as the ML.ENERGY benchmark
does): from when the number of requests in flight first reaches its maximum to
when it last holds it, i.e. after ramp-up and before the queue drains.

A request is in flight from its first output token to its last. Energy in the
window comes from the sampler's power samples (trapezoid), since the energy
counter is read only at the whole window's edges
(`backends.harness.energy.integrate_trapezoid`).
"""

from __future__ import annotations

from dataclasses import dataclass

from llenergymeasure.backends.registry import RequestRecord


@dataclass
class SteadyState:
    start_s: float
    end_s: float
    concurrency: int
    output_tokens: int

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


def steady_state_window(records: list[RequestRecord], min_duration_s: float = 0.5) -> SteadyState | None:
    spans = [(r.token_times_s[0], r.token_times_s[-1]) for r in records if r.token_times_s]
    if len(spans) < 2:
        return None
    # ends sort before starts at the same instant: a hand-over is not a new peak
    events = sorted([(a, 1) for a, _ in spans] + [(b, -1) for _, b in spans])
    level, peak, first, last = 0, 0, None, None
    for t, step in events:
        level += step
        if level > peak:
            peak, first, last = level, t, None
        if step == -1 and level == peak - 1 and first is not None:
            last = t  # the peak held until here
    if first is None or last is None or last - first < min_duration_s:
        return None
    tokens = sum(1 for r in records for t in r.token_times_s if first <= t <= last)
    return SteadyState(first, last, peak, tokens)

