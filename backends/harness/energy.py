"""Energy meters: one source owns a measurement window; none is ever invented.

A meter is started and stopped at the window edges (after device
synchronisation). Where nothing can measure, the meter says why and the result
carries `energy_j: null` with that reason.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Protocol

from backends.harness.gpu import CounterUnsupported, GpuDevice, GpuDiscovery


@dataclass
class EnergyReading:
    duration_s: float
    energy_j: float | None = None
    per_device_j: dict[str, float] = field(default_factory=dict)  # GPU UUID -> joules


class EnergyMeter(Protocol):
    source: str | None  # what measured, e.g. "nvml_total_energy_counter"; None if nothing
    unavailable_reason: str | None

    def start(self) -> None: ...

    def stop(self) -> EnergyReading: ...


class UnavailableMeter:
    """Measures time only; energy stays null, with the reason."""

    source = None

    def __init__(self, reason: str) -> None:
        self.unavailable_reason = reason
        self._t0 = 0.0

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def stop(self) -> EnergyReading:
        return EnergyReading(duration_s=time.perf_counter() - self._t0)


class NvmlCounterMeter:
    """NVML's cumulative total-energy counter, read per GPU at both window edges."""

    source = "nvml_total_energy_counter"
    unavailable_reason = None

    def __init__(self, devices: list[GpuDevice]) -> None:
        self.devices = devices
        self._start_mj: list[int] = []
        self._t0 = 0.0

    def start(self) -> None:
        self._start_mj = [d.total_energy_mj() for d in self.devices]
        self._t0 = time.perf_counter()

    def stop(self) -> EnergyReading:
        end_mj = [d.total_energy_mj() for d in self.devices]
        duration = time.perf_counter() - self._t0
        per = {
            d.uuid: (e - s) / 1000.0 for d, s, e in zip(self.devices, self._start_mj, end_mj)
        }
        return EnergyReading(duration_s=duration, energy_j=sum(per.values()), per_device_j=per)


CPU_REASON = (
    "run on the CPU: this version measures GPU energy (NVML) only; "
    "CPU package energy (RAPL) is not read yet"
)


def select_meter(device: str, gpus: GpuDiscovery) -> EnergyMeter:
    """The best available source for this run's devices, or an explained absence."""
    if device == "cpu":
        return UnavailableMeter(CPU_REASON)
    if not gpus.devices:
        return UnavailableMeter(gpus.unavailable_reason or "no GPU could be opened through NVML")
    try:
        for d in gpus.devices:
            d.total_energy_mj()
    except CounterUnsupported as e:
        return UnavailableMeter(
            f"the NVML total-energy counter is not supported ({e}); "
            "power-polling fallback is not implemented yet"
        )
    return NvmlCounterMeter(gpus.devices)


@contextmanager
def measured(meter: EnergyMeter) -> Iterator[list[EnergyReading]]:
    """`with measured(m) as out:` ... then `out[0]` holds the reading."""
    out: list[EnergyReading] = []
    meter.start()
    try:
        yield out
    finally:
        out.append(meter.stop())
