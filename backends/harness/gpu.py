"""The one seam between the harness and GPU hardware.

Everything the harness reads from a GPU goes through `GpuDevice`. The real
implementation wraps NVML (nvidia-ml-py); tests use a fake named as such.
Capabilities are discovered, not assumed: a reading a GPU doesn't offer is None.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


class CounterUnsupported(Exception):
    """The GPU has no total-energy counter (NVML offers it on Volta and newer)."""


# Kinds of power reading (`GpuDevice.power_kind`).
POWER_INSTANT = "instant"  # NVML_FI_DEV_POWER_INSTANT field (newer drivers)
# nvmlDeviceGetPowerUsage: on Ampere and newer (except GA100) a 1 s moving
# average, so it lags and smooths transients; instantaneous on older GPUs.
POWER_USAGE = "power_usage"

# Clock event ("throttle") reason bits. The bit values are NVML's ABI (nvml.h);
# pynvml renamed the constants (ClocksThrottleReason -> ClocksEventReason), so
# they are spelled out here with stable names of our own.
THROTTLE_REASONS = {
    0x4: "sw_power_cap",
    0x8: "hw_slowdown",
    0x10: "sync_boost",
    0x20: "sw_thermal",
    0x40: "hw_thermal",
    0x80: "hw_power_brake",
    0x100: "display_clock_setting",
}
# Not slowdowns of a busy GPU: idle, and clocks pinned by application-clock settings.
_IGNORED_REASONS = 0x1 | 0x2

# Field id of NVML_FI_DEV_POWER_INSTANT, for bindings too old to name it.
_FI_DEV_POWER_INSTANT = 186


def throttle_names(mask: int) -> list[str]:
    """Names of the active reasons in an NVML clock-event bit mask."""
    mask &= ~_IGNORED_REASONS
    out = []
    bit = 1
    while bit <= mask:
        if mask & bit:
            out.append(THROTTLE_REASONS.get(bit, f"unknown_0x{bit:x}"))
        bit <<= 1
    return out


class GpuDevice(Protocol):
    index: int
    name: str
    uuid: str
    power_kind: str | None  # POWER_INSTANT, POWER_USAGE, or None if power is unreadable

    def total_energy_mj(self) -> int:
        """Energy since driver load, millijoules. Raises CounterUnsupported."""
        ...

    def power_w(self) -> float | None: ...

    def temperature_c(self) -> float | None: ...

    def memory_used_mb(self) -> float | None: ...

    def utilization_pct(self) -> float | None: ...

    def sm_clock_mhz(self) -> float | None: ...

    def mem_clock_mhz(self) -> float | None: ...

    def throttle_reasons(self) -> list[str] | None:
        """Active clock-limiting reasons ([] when none); None if unreadable."""
        ...

    def process_pids(self) -> list[int] | None:
        """PIDs of compute processes on this GPU; None if unreadable. Inside a
        container these are host PIDs (NVML doesn't translate PID namespaces)."""
        ...

    def persistence_mode(self) -> bool | None: ...

    # Settings that move energy per token, read once for the environment snapshot
    # (environment.py); None where the GPU doesn't offer them (NVML "not supported").

    def enforced_power_limit_w(self) -> float | None:
        """The power limit the driver enforces now (the lowest of every limit set)."""
        ...

    def applications_clocks_mhz(self) -> tuple[float | None, float | None]:
        """(SM, memory) applications clocks: the clocks the GPU runs work at unless
        power or temperature hold it lower."""
        ...

    def ecc_enabled(self) -> bool | None:
        """Whether ECC is on now (it costs memory bandwidth and capacity)."""
        ...

    def mig_enabled(self) -> bool | None:
        """Whether MIG (Multi-Instance GPU) mode is on now."""
        ...


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
        # A call can fail as an NVML error, as a binding/driver version mismatch
        # (an unversioned function the driver lacks), or as a name this binding
        # doesn't have: all mean "not offered here".
        self._errors = (
            pynvml.NVMLError,
            getattr(pynvml, "NVMLLibraryMismatchError", pynvml.NVMLError),
            AttributeError,
        )
        self._h = handle
        self.index = index
        self.name = _text(pynvml.nvmlDeviceGetName(handle))
        self.uuid = _text(pynvml.nvmlDeviceGetUUID(handle))
        # Prefer the instantaneous field: plain power usage is a 1 s average on
        # Ampere and newer, which smears energy across window edges.
        if self._instant_power_w() is not None:
            self.power_kind: str | None = POWER_INSTANT
        elif self._read(pynvml.nvmlDeviceGetPowerUsage) is not None:
            self.power_kind = POWER_USAGE
        else:
            self.power_kind = None

    def total_energy_mj(self) -> int:
        try:
            return int(self._nvml.nvmlDeviceGetTotalEnergyConsumption(self._h))
        except self._errors as e:
            raise CounterUnsupported(f"{self.name}: {e}") from None

    def _read(self, fn, scale: float = 1.0) -> float | None:
        try:
            return float(fn(self._h)) * scale
        except self._errors:
            return None

    def _instant_power_w(self) -> float | None:
        fid = getattr(self._nvml, "NVML_FI_DEV_POWER_INSTANT", _FI_DEV_POWER_INSTANT)
        try:
            v = self._nvml.nvmlDeviceGetFieldValues(self._h, [fid])[0]
        except self._errors:
            return None
        if v.nvmlReturn != self._nvml.NVML_SUCCESS:  # per-field status: unsupported field
            return None
        mw = _field_number(v)
        return None if mw is None else mw * 1e-3

    def power_w(self) -> float | None:
        if self.power_kind == POWER_INSTANT:
            return self._instant_power_w()
        if self.power_kind == POWER_USAGE:
            return self._read(self._nvml.nvmlDeviceGetPowerUsage, 1e-3)  # mW
        return None

    def temperature_c(self) -> float | None:
        return self._read(
            lambda h: self._nvml.nvmlDeviceGetTemperature(h, self._nvml.NVML_TEMPERATURE_GPU)
        )

    def memory_used_mb(self) -> float | None:
        return self._read(lambda h: self._nvml.nvmlDeviceGetMemoryInfo(h).used, 1 / 2**20)

    def utilization_pct(self) -> float | None:
        return self._read(lambda h: self._nvml.nvmlDeviceGetUtilizationRates(h).gpu)

    def sm_clock_mhz(self) -> float | None:
        return self._read(lambda h: self._nvml.nvmlDeviceGetClockInfo(h, self._nvml.NVML_CLOCK_SM))

    def mem_clock_mhz(self) -> float | None:
        return self._read(lambda h: self._nvml.nvmlDeviceGetClockInfo(h, self._nvml.NVML_CLOCK_MEM))

    def throttle_reasons(self) -> list[str] | None:
        # "Event" is the current name (drivers 535+); "Throttle" the deprecated one
        # older drivers still have.
        for fn in ("nvmlDeviceGetCurrentClocksEventReasons",
                   "nvmlDeviceGetCurrentClocksThrottleReasons"):
            try:
                return throttle_names(int(getattr(self._nvml, fn)(self._h)))
            except self._errors:
                continue
        return None

    def process_pids(self) -> list[int] | None:
        # The unversioned call is _v3; drivers that predate it still have _v2.
        for fn in ("nvmlDeviceGetComputeRunningProcesses",
                   "nvmlDeviceGetComputeRunningProcesses_v2"):
            try:
                return sorted({int(p.pid) for p in getattr(self._nvml, fn)(self._h)})
            except self._errors:
                continue
        return None

    def persistence_mode(self) -> bool | None:
        try:
            state = self._nvml.nvmlDeviceGetPersistenceMode(self._h)
        except self._errors:
            return None  # e.g. Windows, where persistence mode doesn't exist
        return state == self._nvml.NVML_FEATURE_ENABLED

    def enforced_power_limit_w(self) -> float | None:
        return self._read(self._nvml.nvmlDeviceGetEnforcedPowerLimit, 1e-3)  # mW

    def applications_clocks_mhz(self) -> tuple[float | None, float | None]:
        get = self._nvml.nvmlDeviceGetApplicationsClock
        return (self._read(lambda h: get(h, self._nvml.NVML_CLOCK_SM)),
                self._read(lambda h: get(h, self._nvml.NVML_CLOCK_MEM)))

    def ecc_enabled(self) -> bool | None:
        try:
            current, _pending = self._nvml.nvmlDeviceGetEccMode(self._h)  # pending: after the next reset
        except self._errors:
            return None  # e.g. GeForce boards, which have no ECC
        return current == self._nvml.NVML_FEATURE_ENABLED

    def mig_enabled(self) -> bool | None:
        try:
            current, _pending = self._nvml.nvmlDeviceGetMigMode(self._h)
        except self._errors:
            return None  # GPUs without MIG (before A100/H100) answer "not supported"
        return current == self._nvml.NVML_DEVICE_MIG_ENABLE


# nvmlValue_t union members, in NVML_VALUE_TYPE_* order.
_VALUE_MEMBERS = ("dVal", "uiVal", "ulVal", "ullVal", "sllVal", "siVal", "usVal")


def _field_number(v) -> float | None:
    """The number in an nvmlFieldValue_t, read through the member its valueType names."""
    if not 0 <= v.valueType < len(_VALUE_MEMBERS):
        return None
    return float(getattr(v.value, _VALUE_MEMBERS[v.valueType]))


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


def visible_cuda_uuids() -> list[str]:
    """NVML UUIDs of the CUDA devices this process sees, in CUDA order (after
    CUDA_VISIBLE_DEVICES, which the runners set to the GPUs they pinned)."""
    import torch

    out = []
    for i in range(torch.cuda.device_count()):
        uuid = str(torch.cuda.get_device_properties(i).uuid)
        out.append(uuid if uuid.startswith("GPU-") else f"GPU-{uuid}")
    return out


def cuda_uuids(device: str, n: int = 1,
               visible: Callable[[], list[str]] = visible_cuda_uuids) -> list[str]:
    """NVML UUIDs of the CUDA devices this run was given: its device (`cuda:I`) and the
    n - 1 visible devices after it, the same GPUs a multi-GPU engine (tensor or pipeline
    parallel) takes and the runners pin (runners/container.py assign_device). Fewer
    than n when fewer are visible: the caller warns (validity.gpu_allocation_warnings)
    rather than measure GPUs the run was not given."""
    if not device.startswith("cuda"):
        return []
    index = int(device.split(":")[1]) if ":" in device else 0
    return visible()[index:index + n]


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
