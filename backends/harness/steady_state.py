"""Steady-state window for continuous-batching engines, as the ML.ENERGY benchmark
defines it, tied to the configured concurrency B (how many requests the engine runs at
once: vllm.max_num_seqs, tensorrt.max_batch_size).

Of a pass's N requests, all arriving at once, the window opens at the B-th first token
(the engine has filled up) and closes at the (N - B)-th completion (the last queued
request has taken a slot: from here on the engine drains). With N <= 2B the engine
never replaces a request with a queued one, so there is no steady state. And the engine
must actually hold its B: the time-weighted mean of requests in flight over the window
must be at least MIN_CONCURRENCY_SHARE of B. A window defined by the peak alone (from the
first time the peak is reached to the last time it is left) can span a long stretch in
which one straggler runs alone, e.g. 3 short requests and a straggler at 0-1 s, 3 more at
11-12 s: "concurrency 4" over 0-12 s, with a mean of 1.5 in flight.

A request is in flight from its first output token to its last (its prefill step
before the first token is not seen: a step per request, small against long outputs).
Energy in the window is the caller's (the sampler: the counter read in every sample).
"""

from __future__ import annotations

from dataclasses import dataclass

from llenergymeasure.backends.registry import RequestRecord

MIN_CONCURRENCY_SHARE = 0.8  # of B, time-weighted over the window
MIN_DURATION_S = 0.5


@dataclass
class SteadyState:
    start_s: float
    end_s: float
    concurrency: int  # B, the configured concurrency the window holds
    mean_concurrency: float  # time-weighted mean of requests in flight over the window
    output_tokens: int  # tokens after start_s, up to and including end_s

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class NoSteadyState:
    reason: str
    mean_concurrency: float | None = None  # in flight over the candidate window, where there was one


def mean_in_flight(spans: list[tuple[float, float]], start: float, end: float) -> float:
    """Time-weighted mean number of spans covering [start, end]."""
    if end <= start:
        return 0.0
    covered = sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)
    return covered / (end - start)


def steady_state_window(records: list[RequestRecord], concurrency: int, *,
                        min_share: float = MIN_CONCURRENCY_SHARE,
                        min_duration_s: float = MIN_DURATION_S) -> SteadyState | NoSteadyState:
    """The steady-state window of one pass's records at configured concurrency B, or why
    there is none."""
    b = concurrency
    spans = [(r.token_times_s[0], r.token_times_s[-1]) for r in records if r.token_times_s]
    n = len(spans)
    if b < 1:
        return NoSteadyState(f"configured concurrency {b} is not a number of requests")
    if n <= 2 * b:
        return NoSteadyState(f"{n} requests with output in the pass, not more than 2 x {b} (the configured "
                             "concurrency): the engine never replaces a request with a queued one")
    start = sorted(a for a, _ in spans)[b - 1]
    end = sorted(e for _, e in spans)[n - b - 1]
    if end - start < min_duration_s:
        return NoSteadyState(f"the window from the {b}th first token to the {n - b}th completion lasts "
                             f"{max(0.0, end - start):.3f} s, under {min_duration_s:g} s")
    held = mean_in_flight(spans, start, end)
    if held < min_share * b:
        return NoSteadyState(f"{held:.2f} requests in flight on average over the window, under "
                             f"{min_share:.0%} of the configured {b}: the engine did not hold its concurrency",
                             held)
    tokens = sum(1 for r in records for t in r.token_times_s if start < t <= end)
    return SteadyState(start, end, b, held, tokens)
