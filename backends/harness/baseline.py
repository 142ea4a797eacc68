"""Idle baselines: the power the run's devices draw doing nothing, by the run's own
energy source, per device and in total.

Two kinds, each optional:
- `unloaded` (measurement.baseline_s): before the model is loaded. `energy_net_j`
  subtracts this one (metrics.py). Within a study it may be reused by a later run
  (measurement.baseline_reuse_s), but only from the same energy source and the same
  devices: a counter's idle figure is not a polled one's, nor one GPU's another's.
- `loaded` (measurement.loaded_baseline_s): after loading, before warm-up, with the
  weights (and an engine's preallocated KV cache and graphs) resident. It shows what
  holding the model costs at rest; it is recorded, never subtracted and never reused
  (it belongs to one configuration).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Literal

from llenergymeasure.backends import contract
from llenergymeasure.backends.config import MeasurementConfig
from llenergymeasure.backends.harness.energy import EnergyMeter, measured
from llenergymeasure.backends.harness.heartbeat import beat
from llenergymeasure.backends.harness.result import Baseline

log = logging.getLogger("llem.harness")


def reusable_baseline(m: MeasurementConfig, gpu_uuids: list[str], source: str | None) -> Baseline | None:
    """An unloaded baseline the runner passed from an earlier run of this study, if it was
    measured by the same energy source (`source`: this run's meter's) on the same devices
    recently enough (measurement.baseline_reuse_s); None otherwise."""
    raw = os.environ.get(contract.ENV_BASELINE)
    if not raw or m.baseline_reuse_s <= 0 or source is None:
        return None
    try:
        b = Baseline.model_validate_json(raw)
    except ValueError:
        return None
    fresh = time.time() - b.measured_at_unix <= m.baseline_reuse_s
    same = b.source == source and sorted(b.devices) == sorted(gpu_uuids)
    if gpu_uuids and sorted(b.power_per_device_w) != sorted(gpu_uuids):
        same = False  # a GPU baseline without a value for each of this run's GPUs
    if not fresh or not same or b.kind != "unloaded" or b.power_w is None:
        return None
    return b.model_copy(update={"reused": True})


def _idle(seconds: float) -> None:
    """Wait, beating once a second so the watchdog sees a long baseline as progress."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(1.0, left))
        beat()


def measure_baseline(meter: EnergyMeter, seconds: float, devices: list[str],
                     kind: Literal["unloaded", "loaded"]) -> Baseline:
    """Idle power over `seconds` from `meter`, per device (its per_device_j keys: GPU UUIDs,
    or RAPL zones on a CPU run) and in total; power None where the meter measured nothing."""
    log.info("measuring the %s idle baseline for %.1f s", kind, seconds)
    with measured(meter) as out:
        _idle(seconds)
    r = out[0]
    ok = r.energy_j is not None and r.duration_s > 0
    return Baseline(
        power_w=r.energy_j / r.duration_s if ok else None,  # type: ignore[operator]
        power_per_device_w={k: j / r.duration_s for k, j in r.per_device_j.items()} if ok else {},
        source=meter.source if ok else None,
        kind=kind,
        measured_at_unix=time.time(),
        devices=devices,
        reused=False,
    )


def unloaded_baseline_phase(sampler, meter: EnergyMeter, m: MeasurementConfig,
                            uuids: list[str]) -> tuple[Baseline | None, float]:
    """The run's first phase on every scenario: reuse the study's recent idle baseline where
    allowed, else measure one (`measurement.baseline_s`), with the sampler's phase and the
    heartbeat saying so. Returns the baseline (None when neither) and the seconds it took."""
    t = time.perf_counter()
    baseline = reusable_baseline(m, uuids, meter.source)
    if baseline is None and m.baseline_s > 0:
        sampler.phase = "baseline"
        beat("baseline")
        baseline = measure_baseline(meter, m.baseline_s, uuids, "unloaded")
    return baseline, time.perf_counter() - t
