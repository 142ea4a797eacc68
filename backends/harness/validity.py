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


def gpu_window_warnings(rows: Iterable[dict[str, Any]]) -> list[str]:
    """Warnings from the GPU rows of the window's timeseries samples."""
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
        if readable and len(capped) / len(readable) >= POWER_CAP_SHARE:
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
