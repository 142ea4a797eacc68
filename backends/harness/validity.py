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
}

THERMAL = {"sw_thermal", "hw_thermal", "hw_slowdown"}
POWER = {"sw_power_cap", "hw_power_brake"}
MIN_COVERAGE = 0.9
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
        if reasons & POWER:
            out.append(warning("power_capping", f"{uuid}: {', '.join(sorted(reasons & POWER))}"))
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
