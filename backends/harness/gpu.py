"""The one seam between the harness and GPU hardware.

Everything the harness reads from a GPU goes through `GpuDevice`. The real
implementation wraps NVML (nvidia-ml-py); tests use a fake named as such.
Capabilities are discovered, not assumed: a reading a GPU doesn't offer is None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


class CounterUnsupported(Exception):
    """The GPU has no total-energy counter (NVML offers it on Volta and newer)."""


class GpuDevice(Protocol):
    index: int
    name: str
    uuid: str

    def total_energy_mj(self) -> int:
        """Energy since driver load, millijoules. Raises CounterUnsupported."""
        ...

    def power_w(self) -> float | None: ...

    def temperature_c(self) -> float | None: ...

    def memory_used_mb(self) -> float | None: ...

    def utilization_pct(self) -> float | None: ...


@dataclass
class GpuDiscovery:
    """The GPUs a run uses, or why none could be opened."""

    devices: list[GpuDevice]
    driver_version: str | None = None
    unavailable_reason: str | None = None


class NvmlGpu:
    """A GPU read through NVML."""

    def __init__(self, handle: object, index: int) -> None:
        import pynvml

        self._nvml = pynvml
        self._h = handle
        self.index = index
        self.name = _text(pynvml.nvmlDeviceGetName(handle))
        self.uuid = _text(pynvml.nvmlDeviceGetUUID(handle))

    def total_energy_mj(self) -> int:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._h))
        except self._nvml.NVMLError as e:
            raise CounterUnsupported(f"{self.name}: {e}") from None

    def _read(self, fn, scale: float = 1.0) -> float | None:
        try:
            return float(fn(self._h)) * scale
        except self._nvml.NVMLError:
            return None

    def power_w(self) -> float | None:
        return self._read(self._nvml.nvmlDeviceGetPowerUsage, 1e-3)  # mW

    def temperature_c(self) -> float | None:
        return self._read(
            lambda h: self._nvml.nvmlDeviceGetTemperature(h, self._nvml.NVML_TEMPERATURE_GPU)
        )

    def memory_used_mb(self) -> float | None:
        return self._read(lambda h: self._nvml.nvmlDeviceGetMemoryInfo(h).used, 1 / 2**20)

    def utilization_pct(self) -> float | None:
        return self._read(lambda h: self._nvml.nvmlDeviceGetUtilizationRates(h).gpu)


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


def discover_nvml(uuids: list[str]) -> GpuDiscovery:
    """Open the GPUs with these UUIDs through NVML.

    UUIDs, not indices: CUDA_VISIBLE_DEVICES renumbers devices for CUDA but not
    for NVML, so an index could name another job's GPU.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as e:  # noqa: BLE001 - library missing, no driver, no GPU
        return GpuDiscovery([], unavailable_reason=f"NVML is not available ({e})")
    devices: list[GpuDevice] = []
    for i, uuid in enumerate(uuids):
        try:
            devices.append(NvmlGpu(pynvml.nvmlDeviceGetHandleByUUID(uuid), i))
        except pynvml.NVMLError as e:
            return GpuDiscovery([], unavailable_reason=f"NVML cannot open GPU {uuid} ({e})")
    driver = _text(pynvml.nvmlSystemGetDriverVersion())
    return GpuDiscovery(devices, driver_version=driver)


def cuda_uuids(device: str) -> list[str]:
    """NVML UUIDs of the CUDA devices this run uses (one for now)."""
    if not device.startswith("cuda"):
        return []
    import torch

    props = torch.cuda.get_device_properties(int(device.split(":")[1]))
    uuid = str(props.uuid)
    return [uuid if uuid.startswith("GPU-") else f"GPU-{uuid}"]


def nvml_inventory() -> list[tuple[int, str, str]]:
    """(NVML index, UUID, name) of every GPU the driver shows; [] without NVML."""
    try:
        import pynvml

        pynvml.nvmlInit()
        out = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            out.append((i, _text(pynvml.nvmlDeviceGetUUID(h)), _text(pynvml.nvmlDeviceGetName(h))))
        return out
    except Exception:  # noqa: BLE001 - no library, no driver, no GPU
        return []
