"""Thermal stabilisation under load: after warm-up, keep running passes of the workload
(the same `run_pass` the measured window runs) until GPU temperature and power have
settled, then open the window at once.

Why under load: waiting for a plateau with the GPU idle measures its cool-down, and the
window would open on a GPU that cooled for up to stabilisation_max_s and heats up again
inside it. Under load, the plateau is the one the window then runs at.

Settled: over the trailing stabilisation_window_s, the hottest GPU's temperature stays
within stabilisation_tolerance_c, and the mean total GPU power of each fifth of that
window within stabilisation_tolerance_w of the others. Power is compared as means of
fifths because instantaneous power swings with every prefill and decode step, which is
no trend; the fifths' means show one (clocks dropping as the GPU heats, fans ramping).
Checked after each pass, on the samples the background sampler took during the passes,
once stabilisation_min_s have passed; after stabilisation_max_s (the pass in progress
finishes first) it gives up and says how far from settled it was. Recorded: the time
waited and, in the detail, the passes run and the figures.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from llenergymeasure.backends.config import MeasurementConfig

# (perf_counter time, hottest GPU °C, total power W over the run's GPUs); None: not readable
Sample = tuple[float, float | None, float | None]
POWER_SLICES = 5  # the trailing window's power is compared as the means of this many slices


@dataclass
class Stabilisation:
    waited_s: float
    reached: bool | None  # None: nothing to wait for (CPU run, disabled, or no readings)
    detail: str
    passes: int = 0  # passes run under load while waiting


@dataclass
class Spread:
    """How far the trailing window is from flat; None where there was no such reading."""

    temperature_c: float | None
    power_w: float | None

    def within(self, m: MeasurementConfig) -> bool:
        return ((self.temperature_c is None or self.temperature_c <= m.stabilisation_tolerance_c)
                and (self.power_w is None or self.power_w <= m.stabilisation_tolerance_w))

    def text(self) -> str:
        parts = [f"±{self.temperature_c:.1f} °C" if self.temperature_c is not None else "no temperature",
                 f"±{self.power_w:.1f} W" if self.power_w is not None else "no power"]
        return ", ".join(parts)


def spread(samples: list[Sample], now: float, window_s: float) -> Spread | None:
    """The trailing window's spread, or None until samples cover it: every fifth of it
    holds one (a sampler that stalled leaves a hole, and a few samples close together
    would look flat), or while no sample has a reading."""
    lo = now - window_s
    width = window_s / POWER_SLICES
    slices: list[list[Sample]] = [[] for _ in range(POWER_SLICES)]
    for s in samples:
        if lo <= s[0] <= now:
            slices[min(POWER_SLICES - 1, int((s[0] - lo) / width))].append(s)
    if not all(slices):
        return None
    temps = [t for part in slices for _, t, _ in part if t is not None]
    means = []
    for part in slices:
        powers = [p for _, _, p in part if p is not None]
        if powers:
            means.append(sum(powers) / len(powers))
    if not temps and not means:
        return None
    return Spread(max(temps) - min(temps) if temps else None, max(means) - min(means) if means else None)


def stabilise_under_load(
    run_pass: Callable[[], object],
    samples: Callable[[], list[Sample]],
    m: MeasurementConfig,
    *,
    clock: Callable[[], float] = time.perf_counter,
) -> Stabilisation:
    """Run passes until the plateau under load (see the module). `samples()`: the GPU
    samples taken so far while stabilising (the sampler's phase), on `clock`."""
    if m.stabilisation_max_s <= 0:
        return Stabilisation(0.0, None, "disabled (measurement.stabilisation_max_s = 0)")
    t0 = clock()
    passes = 0
    w = m.stabilisation_window_s
    while True:
        run_pass()
        passes += 1
        now = clock()
        waited = now - t0
        history = [s for s in samples() if s[0] >= t0]
        if waited >= w and not any(t is not None or p is not None for _, t, p in history):
            return Stabilisation(waited, None, "no temperature or power readings to wait on", passes)
        found = spread(history, now, w)
        if found is not None and found.within(m) and waited >= m.stabilisation_min_s:
            return Stabilisation(waited, True, f"plateau under load after {waited:.1f} s and {passes} pass(es) "
                                               f"({found.text()} over the last {w:g} s)", passes)
        if waited >= m.stabilisation_max_s:
            figures = found.text() if found else "too few samples to judge"
            return Stabilisation(waited, False, f"still moving after {waited:.0f} s and {passes} pass(es) under "
                                                f"load ({figures} over the last {w:g} s; tolerance "
                                                f"{m.stabilisation_tolerance_c:g} °C, {m.stabilisation_tolerance_w:g} W)",
                                 passes)
