"""Thermal stabilisation: after warm-up, wait until GPU temperature and power stay
within tolerance over a trailing window, between a minimum and a maximum wait.
Recorded: how long it took and whether the plateau was reached."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from llenergymeasure.backends.config import MeasurementConfig

Reading = tuple[float | None, float | None]  # (max temperature °C, total power W) over the run's GPUs


@dataclass
class Stabilisation:
    waited_s: float
    reached: bool | None  # None: nothing to wait for (CPU run, disabled, or no readings)
    detail: str


def wait_for_plateau(
    read: Callable[[], Reading],
    m: MeasurementConfig,
    *,
    poll_s: float = 0.5,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Stabilisation:
    if m.stabilisation_max_s <= 0:
        return Stabilisation(0.0, None, "disabled (measurement.stabilisation_max_s = 0)")
    t0 = clock()
    history: list[tuple[float, float, float]] = []  # (t, temperature, power)
    while True:
        t = clock() - t0
        temp, power = read()
        if temp is None and power is None:
            return Stabilisation(t, None, "no temperature or power readings to wait on")
        history.append((t, temp or 0.0, power or 0.0))
        recent = [h for h in history if h[0] >= t - m.stabilisation_window_s]
        covered = t - recent[0][0] >= m.stabilisation_window_s * 0.99 if len(recent) > 1 else False
        if covered and t >= m.stabilisation_min_s:
            dt = max(h[1] for h in recent) - min(h[1] for h in recent)
            dp = max(h[2] for h in recent) - min(h[2] for h in recent)
            if dt <= m.stabilisation_tolerance_c and dp <= m.stabilisation_tolerance_w:
                return Stabilisation(t, True, f"plateau after {t:.1f} s (±{dt:.1f} °C, ±{dp:.1f} W)")
        if t >= m.stabilisation_max_s:
            last = recent or history
            dt = max(h[1] for h in last) - min(h[1] for h in last)
            dp = max(h[2] for h in last) - min(h[2] for h in last)
            return Stabilisation(t, False, f"still moving after {t:.0f} s ({dt:.1f} °C, {dp:.1f} W "
                                           f"over the last {m.stabilisation_window_s:g} s)")
        sleep(poll_s)
