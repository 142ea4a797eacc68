"""Every metric's single definition. Adapters report raw request timings; only this
module turns them into numbers, so all backends mean the same thing by each name.

Request latencies follow vLLM's serving benchmark (`vllm bench serve`): they count from a
request's arrival at the workload (stamped by the harness, the same on every backend),
not from when an adapter happened to hand it to its engine.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from pydantic import BaseModel, ConfigDict

from llenergymeasure.backends.harness.energy import EnergyReading
from llenergymeasure.backends.harness.steady_state import SteadyState
from llenergymeasure.backends.registry import RequestRecord

PERCENTILES = (50, 90, 99)


class Metrics(BaseModel):
    """Metrics of one run's measured window (units in the names)."""

    model_config = ConfigDict(extra="forbid")

    n_requests: int  # requests in the window, summed over passes
    n_passes: int  # passes over the dataset in the window (measurement.min_window_s)
    input_tokens: int  # prompt tokens after truncation, padding excluded
    output_tokens: int  # generated tokens that reached the host, per request, summed
    duration_s: float  # measured window, device-synchronised at both edges
    output_tokens_per_s: float  # output_tokens / duration_s
    requests_per_s: float  # n_requests / duration_s
    # TTFT: first output token - the request's arrival (offline: the start of its pass,
    # so time queued behind earlier batches or for an engine slot counts), over requests
    ttft_ms_p50: float | None
    ttft_ms_p90: float | None
    ttft_ms_p99: float | None
    # ITL: gaps between consecutive output tokens of the same request, pooled over requests
    itl_ms_p50: float | None
    itl_ms_p90: float | None
    itl_ms_p99: float | None
    # TPOT: per request with >= 2 output tokens, (E2E - TTFT) / (output tokens - 1), over requests
    tpot_ms_p50: float | None
    tpot_ms_p90: float | None
    tpot_ms_p99: float | None
    # E2E latency: last output token - the request's arrival, over requests
    e2e_ms_p50: float | None
    e2e_ms_p90: float | None
    e2e_ms_p99: float | None
    model_load_s: float
    # GPU: peak memory in use on the run's GPUs in the window (NVML, 100 ms samples,
    # device-level); CPU: the run process's peak RSS
    peak_memory_mb: float | None
    # gross energy of the window on the devices doing the inference: the run's GPUs,
    # or the CPU packages + DRAM (RAPL) for a CPU run
    energy_j: float | None
    # Derived energy figures are null when energy_j is null or <= 0: a window draws
    # power, so a non-positive reading is a source fault (warning energy_not_positive)
    # and a "0 J per token" would rank first in every comparison.
    energy_per_output_token_j: float | None  # energy_j / output_tokens
    energy_per_request_j: float | None  # energy_j / n_requests
    energy_per_total_token_j: float | None  # energy_j / (input_tokens + output_tokens)
    energy_per_flop_j: float | None  # energy_j / flops_estimate (cross-hardware normaliser)
    avg_power_w: float | None  # energy_j / duration_s
    # Energy-delay product per request, J·s: energy_per_request_j x the mean E2E latency (s)
    # over the window's requests. Lower is better; it rewards saving energy only where latency
    # does not grow as much (a power cap that saves 20% energy for 30% more latency scores worse).
    energy_delay_product_js: float | None = None
    output_tokens_per_joule: float | None = None  # output_tokens / energy_j (1 / energy_per_output_token_j)
    cpu_energy_j: float | None  # CPU packages + DRAM over the window (RAPL), on every run where readable
    baseline_power_w: float | None  # idle power before loading (measurement.baseline_s): the unloaded baseline
    # energy_j - baseline_power_w * duration_s: net of the *unloaded* baseline only, never the
    # loaded one (may be < 0: warning energy_net_negative)
    energy_net_j: float | None
    # idle power with the model resident, after loading and before warm-up
    # (measurement.loaded_baseline_s); recorded beside the unloaded one, subtracted from nothing
    loaded_baseline_power_w: float | None = None
    flops_estimate: float  # 2 x parameters x (input + output tokens); a normaliser only
    # Steady state (continuous-batching backends, harness/steady_state.py): from the B-th
    # first token to the (N - B)-th completion of the first pass (B: the configured
    # concurrency), held at >= 80% of B; energy from the GPUs' energy counters read in
    # every sample (result.steady_state says how, or why there is no such window).
    steady_state_duration_s: float | None
    steady_state_concurrency: int | None  # B, held: result.steady_state.mean_concurrency says how well
    steady_state_output_tokens_per_s: float | None
    steady_state_energy_j: float | None
    steady_state_energy_per_output_token_j: float | None
    # Serving scenario only (null offline; defined in backends/serving/metrics.py): the
    # window is the load, from the first scheduled arrival to the last completion, and
    # every latency above counts from a request's scheduled arrival.
    offered_request_rate_rps: float | None = None  # (n - 1) / span of the scheduled arrivals
    achieved_request_rate_rps: float | None = None  # (n - 1) / span of the completions
    goodput_rps: float | None = None  # requests meeting every serving.slo target / duration_s
    slo_met_share: float | None = None  # their share of the requests
    saturated: bool | None = None  # fell behind the offered rate, or TTFT trended up (None: not assessed)
    ttft_trend_p_value: float | None = None  # Mann-Kendall, one-sided (upward)
    ttft_trend_ms_per_s: float | None = None  # Theil-Sen slope of TTFT over arrival time
    client_send_lag_ms_p99: float | None = None  # sent - scheduled, requests that had a free slot


def _arrival(r: RequestRecord) -> float:
    if r.arrival_s is None:
        raise ValueError("a request record has no arrival_s: latencies count from a request's arrival, "
                         "which the harness stamps (harness.protocol.run_pass) before metrics are computed")
    return r.arrival_s


def ttft_s(r: RequestRecord) -> float | None:
    """First output token - arrival; None for a request that produced no token."""
    return r.token_times_s[0] - _arrival(r) if r.token_times_s else None


def e2e_s(r: RequestRecord) -> float | None:
    """Last output token - arrival; None for a request that produced no token."""
    return r.token_times_s[-1] - _arrival(r) if r.token_times_s else None


def tpot_s(r: RequestRecord) -> float | None:
    """(E2E - TTFT) / (output tokens - 1): the request's mean decode step. None below 2
    tokens, where there is no step (a 1-token request would otherwise count as 0 s)."""
    ttft, e2e = ttft_s(r), e2e_s(r)
    if r.output_tokens < 2 or ttft is None or e2e is None:
        return None
    return (e2e - ttft) / (r.output_tokens - 1)


def itl_s(r: RequestRecord) -> list[float]:
    """Gaps between the request's consecutive output tokens."""
    return [b - a for a, b in zip(r.token_times_s, r.token_times_s[1:])]


def _per_request(records: list[RequestRecord], definition: Callable[[RequestRecord], float | None]) -> list[float]:
    return [v for v in map(definition, records) if v is not None]


def _percentiles(values: list[float], prefix: str) -> dict[str, float | None]:
    if not values:
        return {f"{prefix}_p{p}": None for p in PERCENTILES}
    arr = np.asarray(values) * 1000.0
    return {f"{prefix}_p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}


def _per(energy: float | None, amount: float) -> float | None:
    return energy / amount if energy is not None and amount else None


def _edp(energy: float | None, records: list[RequestRecord]) -> float | None:
    """energy per request (J) x mean E2E latency (s); None without energy or latencies."""
    e2e = _per_request(records, e2e_s)
    if energy is None or not e2e or not records:
        return None
    return energy / len(records) * (sum(e2e) / len(e2e))


def compute_metrics(
    records: list[RequestRecord],
    reading: EnergyReading,
    *,
    model_load_s: float,
    peak_memory_mb: float | None,
    n_parameters: int,
    baseline_power_w: float | None,
    n_passes: int = 1,
    cpu_energy_j: float | None = None,
    steady: SteadyState | None = None,
    steady_energy_j: float | None = None,
    loaded_baseline_power_w: float | None = None,
) -> Metrics:
    duration = reading.duration_s
    out_tokens = sum(r.output_tokens for r in records)
    in_tokens = sum(r.input_tokens for r in records)
    itl = [gap for r in records for gap in itl_s(r)]
    energy = reading.energy_j
    # what is divided and subtracted: never a non-positive reading (see Metrics)
    usable = energy if energy is not None and energy > 0 else None
    flops = 2.0 * n_parameters * (in_tokens + out_tokens)
    return Metrics(
        n_requests=len(records),
        n_passes=n_passes,
        input_tokens=in_tokens,
        output_tokens=out_tokens,
        duration_s=duration,
        output_tokens_per_s=out_tokens / duration,
        requests_per_s=len(records) / duration,
        **_percentiles(_per_request(records, ttft_s), "ttft_ms"),
        **_percentiles(itl, "itl_ms"),
        **_percentiles(_per_request(records, tpot_s), "tpot_ms"),
        **_percentiles(_per_request(records, e2e_s), "e2e_ms"),
        model_load_s=model_load_s,
        peak_memory_mb=peak_memory_mb,
        energy_j=energy,
        energy_per_output_token_j=_per(usable, out_tokens),
        energy_per_request_j=_per(usable, len(records)),
        energy_per_total_token_j=_per(usable, in_tokens + out_tokens),
        energy_per_flop_j=_per(usable, flops),
        avg_power_w=_per(usable, duration),
        energy_delay_product_js=_edp(usable, records),
        output_tokens_per_joule=out_tokens / usable if usable is not None else None,
        cpu_energy_j=cpu_energy_j,
        baseline_power_w=baseline_power_w,
        energy_net_j=(
            usable - baseline_power_w * duration
            if usable is not None and baseline_power_w is not None
            else None
        ),
        loaded_baseline_power_w=loaded_baseline_power_w,
        flops_estimate=flops,
        steady_state_duration_s=steady.duration_s if steady else None,
        steady_state_concurrency=steady.concurrency if steady else None,
        steady_state_output_tokens_per_s=_per(steady.output_tokens, steady.duration_s) if steady else None,
        steady_state_energy_j=steady_energy_j if steady else None,
        steady_state_energy_per_output_token_j=_per(steady_energy_j, steady.output_tokens) if steady else None,
    )
