"""What the GPU actually enforced during the measured window, beside what `gpu:` asked for.

The orchestrator sets a run's `gpu:` settings before the run starts (orchestrator/
execution/gpu_levers.py); the result records what the driver enforced, read back
through NVML, never the request: the enforced power limit is the lowest of every
limit in force (an administrator's, a thermal one, ours), and locked clocks still
yield to power and temperature. A read-back that differs from the request is warned
(`gpu_setting_mismatch`), since the figures then describe another setting.

Power limit: read at the window's end (it does not move within a run). Clocks: the
window's samples (the sampler reads SM and memory clocks in every one).
"""

from __future__ import annotations

import statistics
from typing import Any

from pydantic import BaseModel, ConfigDict

from llenergymeasure.backends.gpu_settings import GpuSettings
from llenergymeasure.backends.harness.gpu import GpuDevice
from llenergymeasure.backends.harness.validity import warning

POWER_TOLERANCE_W = 1.0  # NVML sets in mW and may round to its own step
CLOCK_TOLERANCE_MHZ = 15  # a GPU's clock steps are ~7.5-15 MHz: a lock lands on the nearest one


class GpuReadback(BaseModel):
    """One GPU's enforced settings over the measured window (None: unreadable)."""

    model_config = ConfigDict(extra="forbid")

    uuid: str
    power_limit_w: float | None  # NVML enforced power limit, read at the window's end
    sm_clock_mhz_median: float | None  # median of the window's samples
    sm_clock_mhz_min: float | None
    sm_clock_mhz_max: float | None
    memory_clock_mhz_median: float | None
    memory_clock_mhz_min: float | None
    memory_clock_mhz_max: float | None


def _stats(values: list[float]) -> tuple[float | None, float | None, float | None]:
    if not values:
        return None, None, None
    return float(statistics.median(values)), float(min(values)), float(max(values))


def _enforced_limit(g: GpuDevice) -> float | None:
    read = getattr(g, "enforced_power_limit_w", None)  # a GpuDevice from before the reading existed
    try:
        return read() if read is not None else None
    except Exception:  # noqa: BLE001 - a reading the GPU doesn't offer
        return None


def read_back(gpus: list[GpuDevice], window_rows: list[dict[str, Any]]) -> list[GpuReadback]:
    """Each GPU's enforced power limit now and its clocks over the window's samples."""
    out = []
    for g in gpus:
        rows = [r for r in window_rows if r.get("device") == g.uuid]
        sm = _stats([r["sm_clock_mhz"] for r in rows if r.get("sm_clock_mhz") is not None])
        mem = _stats([r["mem_clock_mhz"] for r in rows if r.get("mem_clock_mhz") is not None])
        out.append(GpuReadback(uuid=g.uuid, power_limit_w=_enforced_limit(g),
                               sm_clock_mhz_median=sm[0], sm_clock_mhz_min=sm[1], sm_clock_mhz_max=sm[2],
                               memory_clock_mhz_median=mem[0], memory_clock_mhz_min=mem[1],
                               memory_clock_mhz_max=mem[2]))
    return out


def _outside(median: float | None, wanted: list[int]) -> bool:
    return median is not None and not (wanted[0] - CLOCK_TOLERANCE_MHZ <= median <= wanted[1] + CLOCK_TOLERANCE_MHZ)


def mismatch_warnings(requested: GpuSettings | None, readback: list[GpuReadback]) -> list[str]:
    """`gpu_setting_mismatch` for every requested setting a GPU did not hold in the window."""
    if requested is None:
        return []
    out = []
    for r in readback:
        if requested.power_limit_w is not None:
            if r.power_limit_w is None:
                out.append(warning("gpu_setting_mismatch", f"{r.uuid}: power limit {requested.power_limit_w:g} W "
                                   "requested, but the enforced limit could not be read back"))
            elif abs(r.power_limit_w - requested.power_limit_w) > POWER_TOLERANCE_W:
                out.append(warning("gpu_setting_mismatch", f"{r.uuid}: power limit {requested.power_limit_w:g} W "
                                   f"requested, {r.power_limit_w:g} W enforced"))
        for name, median, what in (("sm_clocks_mhz", r.sm_clock_mhz_median, "SM"),
                                   ("memory_clocks_mhz", r.memory_clock_mhz_median, "memory")):
            wanted = getattr(requested, name)
            if wanted is not None and _outside(median, wanted):
                out.append(warning("gpu_setting_mismatch", f"{r.uuid}: {what} clocks locked to {wanted} MHz, "
                                   f"median {median:g} MHz in the window (power or temperature held them, or "
                                   "the lock did not take)"))
    return out
