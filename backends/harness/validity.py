"""Validity warnings that travel with every result: a stable code, then one line
saying what happened and why it matters. Reviewers filter on the code."""

from __future__ import annotations

import statistics
from collections.abc import Iterable
from typing import Any

CODES: dict[str, str] = {
    "window_short": "the measured window is shorter than measurement.min_window_s",
    "low_sampling_coverage": "the background sampler missed samples in the window",
    "thermal_throttling": "a GPU throttled for temperature during the window",
    "power_capping": "a GPU was held at its power cap during the window",
    "foreign_processes": "other processes used a measured GPU during the window",
    "clock_drift": "GPU SM clocks drifted across the window",
    "temperature_drift": "GPU temperature drifted across the window",
    "persistence_mode_off": "GPU persistence mode is off (driver load/unload adds latency and power noise)",
    "not_stabilised": "temperature/power did not plateau before the stabilisation limit",
    "output_length": "some requests did not produce exactly max_output_tokens tokens",
    "gpus_measured_mismatch": "the GPUs measured are not the GPUs the run was given, so energy covers "
                              "more or less than the run's devices",
    "energy_not_positive": "the window's energy reading is zero or negative, which no real window "
                           "draws: a counter or source fault; energy per token/request is withheld",
    "energy_net_negative": "baseline power x window exceeds the window's energy: the idle baseline "
                           "was not this window's idle floor",
    "sampling_gap": "samples stopped for longer than MAX_GAP_INTERVALS sampling intervals in the window; "
                    "the trapezoid bridged the hole with a straight line",
    "host_contention": "processes outside the run used host CPU during the window; RAPL energy is "
                       "host-wide, so it includes their share",
    "energy_counter_stuck": "a GPU's energy counter did not advance over the window, which no working "
                            "GPU does: no energy is reported for the window rather than 0 J",
    "energy_edge_unaligned": "a window edge could not be stamped at an update of the GPU energy "
                             "counter (it updates about every 100 ms), so the energy read there may "
                             "lag its time by up to a period at the GPU's power",
    "energy_window_short": "an edge was not stamped at a counter update and the window spans fewer than "
                           "MIN_COUNTER_UPDATES updates of the GPU energy counter, so that edge's part-period "
                           "error moves its energy measurably",
    "prefix_cache_not_reset": "the engine could not empty its prefix cache before a pass, so the pass "
                              "may have skipped the prefill of prompts an earlier pass ran",
    "rapl_multiple_wraps": "a RAPL counter could have wrapped once more in the window than its two "
                           "readings show; CPU energy may be short by a whole counter range",
    "cpu_energy_shared": "other llem runs were active on this host during the window; RAPL CPU energy "
                         "is host-wide, so it includes their share",
    "gpu_setting_mismatch": "a gpu: setting (power limit, locked clocks) read back from NVML during the "
                            "window differs from the one requested (harness/readback.py)",
    "saturated": "serving scenario: the deployment fell behind the offered load (achieved request rate "
                 "below the offered one, or TTFT trending up through the load): its latencies describe a "
                 "growing queue, not the offered rate (backends/serving/metrics.py)",
}

THERMAL = {"sw_thermal", "hw_thermal", "hw_slowdown"}
POWER = {"sw_power_cap", "hw_power_brake"}
MIN_COVERAGE = 0.9
# Longest hole between consecutive samples, in sampling intervals. Coverage 0.9 still
# allows one hole of a tenth of the window (6 s of a 60 s window), over which power is
# interpolated linearly: ten intervals (1 s at the sampler's 100 ms, 100 ms for 10 ms
# power polling) is where a batch boundary or a clock change can hide inside the hole.
MAX_GAP_INTERVALS = 10
# Share of the window's throttle-readable samples that must show a power-cap reason.
# A saturated H100 touches its cap for single samples all the time (the power
# controller's normal work); being held there for a tenth of the window shifts the
# clocks, and so energy per token, measurably.
POWER_CAP_SHARE = 0.10
# CPU time used outside the run's process tree, in core-equivalents of the window
# (core-seconds / window seconds). A quiet host's daemons stay well under a tenth of
# one core; above it, RAPL's host-wide energy carries someone else's work.
HOST_CONTENTION_CORES = 0.10
# Updates of the NVML energy counter a window should span. Its edges are stamped at
# updates (energy.NvmlCounterMeter); what remains per edge is about one poll and how the
# driver integrates between updates, a share that fades over a hundred of them.
MIN_COUNTER_UPDATES = 100
NOMINAL_COUNTER_PERIOD_S = 0.1  # NVML's update period where it could not be measured
CLOCK_DRIFT = 0.10  # relative change of median SM clock, first vs last tenth
TEMP_DRIFT_C = 5.0


def warning(code: str, detail: str) -> str:
    assert code in CODES, code
    return f"{code}: {detail}"


def _edges(values: list[float]) -> tuple[float, float] | None:
    """Median of the first and of the last tenth of a series (at least one sample each)."""
    if len(values) < 4:
        return None
    k = max(1, len(values) // 10)
    return statistics.median(values[:k]), statistics.median(values[-k:])


def gpu_window_warnings(rows: Iterable[dict[str, Any]], requested_power_limit_w: float | None = None) -> list[str]:
    """Warnings from the GPU rows of the window's timeseries samples. Under a power limit
    the study set itself (gpu.power_limit_w), running at that cap is the setting being
    measured, not a disturbance: `power_capping` is not raised then (the enforced limit is
    read back and compared instead: `gpu_setting_mismatch`)."""
    by_gpu: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        if r["device"] != "process":
            by_gpu.setdefault(r["device"], []).append(r)
    out: list[str] = []
    for uuid, samples in by_gpu.items():
        reasons = set()
        for s in samples:
            reasons |= set(filter(None, (s.get("throttle_reasons") or "").split(",")))
        if reasons & THERMAL:
            out.append(warning("thermal_throttling", f"{uuid}: {', '.join(sorted(reasons & THERMAL))}"))
        readable = [s for s in samples if s.get("throttle_reasons") is not None]
        capped = [s for s in readable if POWER & set(s["throttle_reasons"].split(","))]
        if requested_power_limit_w is None and readable and len(capped) / len(readable) >= POWER_CAP_SHARE:
            out.append(warning("power_capping", f"{uuid}: {', '.join(sorted(reasons & POWER))} in "
                                                f"{len(capped) / len(readable):.0%} of samples"))
        foreign = max((s.get("foreign_processes") or 0) for s in samples)
        if foreign:
            out.append(warning("foreign_processes", f"{uuid}: up to {foreign} other process(es) on the GPU"))
        clocks = _edges([s["sm_clock_mhz"] for s in samples if s.get("sm_clock_mhz")])
        if clocks and abs(clocks[1] - clocks[0]) > CLOCK_DRIFT * clocks[0]:
            out.append(warning("clock_drift", f"{uuid}: SM clock {clocks[0]:.0f} -> {clocks[1]:.0f} MHz"))
        temps = _edges([s["temperature_c"] for s in samples if s.get("temperature_c") is not None])
        if temps and abs(temps[1] - temps[0]) > TEMP_DRIFT_C:
            out.append(warning("temperature_drift", f"{uuid}: {temps[0]:.0f} -> {temps[1]:.0f} °C"))
    return out


def window_warnings(
    *,
    duration_s: float,
    min_window_s: float,
    passes: int,
    coverage: float | None,
    persistence: dict[str, bool | None],
    stabilised: bool | None,
    stabilisation_detail: str,
    short_requests: int,
    max_output_tokens: int,
) -> list[str]:
    out: list[str] = []
    if duration_s < min_window_s:
        out.append(warning("window_short", f"{duration_s:.2f} s in {passes} pass(es), under {min_window_s:g} s; "
                                           "raise n_prompts or measurement.max_passes"))
    if coverage is not None and coverage < MIN_COVERAGE:
        out.append(warning("low_sampling_coverage", f"{coverage:.0%} of expected samples arrived"))
    off = [uuid for uuid, on in persistence.items() if on is False]
    if off:
        out.append(warning("persistence_mode_off", ", ".join(off)))
    if stabilised is False:
        out.append(warning("not_stabilised", stabilisation_detail))
    if short_requests:
        out.append(warning("output_length", f"{short_requests} request(s) did not produce exactly "
                                            f"{max_output_tokens} tokens"))
    return out


def gpu_allocation_warnings(allocated: int, named: list[str], measured: list[str]) -> list[str]:
    """`allocated`: GPUs the run was given (gpus_per_run); `named`: the UUIDs found for
    them among the visible devices; `measured`: the UUIDs whose energy was measured
    (or, where no energy was, that NVML opened)."""
    if len(named) == allocated and sorted(named) == sorted(measured):
        return []
    return [warning("gpus_measured_mismatch",
                    f"measured {len(measured)} GPU(s) ({', '.join(measured) or 'none'}) of the {allocated} "
                    f"the run was given ({', '.join(named) or 'none visible'})")]


def energy_warnings(energy_j: float | None, energy_net_j: float | None) -> list[str]:
    out = []
    if energy_j is not None and energy_j <= 0:
        out.append(warning("energy_not_positive", f"energy_j = {energy_j:g} J"))
    if energy_net_j is not None and energy_net_j < 0:
        out.append(warning("energy_net_negative", f"energy_net_j = {energy_net_j:g} J"))
    return out


def gap_warnings(series: dict[str, tuple[float | None, float]]) -> list[str]:
    """series: name (e.g. "sampler") -> (longest gap between its samples in the window in s,
    or None if unknown; its sampling interval in s)."""
    out = []
    for name, (gap_s, interval_s) in series.items():
        if gap_s is not None and gap_s > MAX_GAP_INTERVALS * interval_s:
            out.append(warning("sampling_gap", f"{name}: no sample for {gap_s:.2f} s "
                                               f"({gap_s / interval_s:.0f} intervals of {interval_s:g} s)"))
    return out


def host_contention_warnings(other_cpu_s: float | None, duration_s: float) -> list[str]:
    """other_cpu_s: host CPU time used outside the run's process tree during the window."""
    if other_cpu_s is None or duration_s <= 0:
        return []
    cores = other_cpu_s / duration_s
    if cores <= HOST_CONTENTION_CORES:
        return []
    return [warning("host_contention", f"other processes used {cores:.2f} core-equivalents "
                                       f"({other_cpu_s:.1f} CPU-s in {duration_s:.1f} s)")]


def rapl_wrap_warnings(doubt: dict[str, tuple[float, float]], duration_s: float) -> list[str]:
    """doubt: RAPL zone -> (average W had it wrapped once more, the zone's plausible maximum W),
    for the zones where that extra wrap was possible (EnergyReading.rapl_wrap_doubt)."""
    if not doubt:
        return []
    zones = "; ".join(f"{zone}: one more wrap would mean {more_w:.0f} W on average, within its "
                      f"{max_w:.0f} W bound" for zone, (more_w, max_w) in sorted(doubt.items()))
    return [warning("rapl_multiple_wraps", f"{duration_s:.0f} s window; {zones}")]


def cpu_energy_shared_warning(others: list[str]) -> str:
    """others: the llem runs that were active on the host during the window (whoever
    registered them: the orchestrator's host run registry)."""
    return warning("cpu_energy_shared", f"{len(others)} other llem run(s) active on this host during the "
                                        f"window ({', '.join(others[:5])}{', ...' if len(others) > 5 else ''})")


def counter_warnings(*, duration_s: float, period_s: float | None, unaligned: list[str],
                     stuck: list[str], edge_poll_s: float) -> list[str]:
    """Warnings of an NVML-counter window (EnergyReading.counter_*): a counter that did not
    advance, an edge not stamped at an update (within edge_poll_s), and a window of fewer
    than MIN_COUNTER_UPDATES updates (period_s: as measured after the window, else nominal).

    The short-window check applies only when an edge is unaligned: an edge stamped at a
    counter update carries no part-period error, so a 5 s window of aligned edges is exact
    to the edge poll (0.3 s bound, typically a few ms), while an unaligned one can miss up
    to a whole update period at that edge, all in one direction (idle at the start, load at
    the end), which only many updates dilute."""
    out = []
    if stuck:
        out.append(warning("energy_counter_stuck", f"no change over {duration_s:.2f} s on {', '.join(stuck)}"))
    if unaligned:
        out.append(warning("energy_edge_unaligned", f"no counter update within {edge_poll_s:g} s at "
                                                    f"{', '.join(unaligned)}"))
    period = period_s or NOMINAL_COUNTER_PERIOD_S
    updates = duration_s / period
    if unaligned and updates < MIN_COUNTER_UPDATES:
        how = "measured" if period_s else "nominal"
        out.append(warning("energy_window_short", f"{duration_s:.2f} s is {updates:.0f} counter updates of "
                                                  f"{period * 1000:.0f} ms ({how}), under {MIN_COUNTER_UPDATES}; "
                                                  "raise measurement.min_window_s"))
    return out
