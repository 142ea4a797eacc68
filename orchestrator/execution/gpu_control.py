"""The one seam between the orchestrator and a GPU's settable levers (power limit,
locked clocks, persistence mode): `GpuControl`, over NVML on a real host, a fake in
tests (tests/support/fakes.py FakeGpuControl; this machine has no GPU).

Reading is open to everyone; changing needs root (or an administrator's delegated
permission), and NVML then answers NVML_ERROR_NO_PERMISSION: a `ControlError` with
`no_permission` set. GPUs are named by UUID, never by index (an index can name another
job's GPU under CUDA_VISIBLE_DEVICES).

NVML offers no way to read whether clocks are locked, or to what: llem's model is that
clocks are unlocked (driver default) before and after a run that locked them, and
"restore" for clocks means NVML's reset.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict


class ControlUnavailable(Exception):
    """No GPU control on this host (no NVML, no driver, no GPU); the message says why."""


class ControlError(Exception):
    """NVML refused a change or a reading. `setting` is the gpu.* name it was for."""

    def __init__(self, setting: str, uuid: str, nvml_error: str, no_permission: bool = False) -> None:
        super().__init__(f"{setting} on GPU {uuid}: NVML: {nvml_error}")
        self.setting, self.uuid, self.nvml_error, self.no_permission = setting, uuid, nvml_error, no_permission


@dataclass(frozen=True)
class GpuConstraints:
    """What a GPU accepts, as its driver says."""

    name: str
    power_limit_w: tuple[float, float] | None  # NVML's (min, max) power management limit; None: unreadable
    sm_clocks_mhz: tuple[int, ...] = ()  # supported graphics clocks (over every memory clock); (): unknown
    memory_clocks_mhz: tuple[int, ...] = ()  # supported memory clocks; (): unknown


class LeverState(BaseModel):
    """What a GPU has now of what llem may change, recorded before it changes anything
    so that it can be put back (clocks: see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    power_limit_w: float | None  # the power management limit in force; None: unreadable
    persistence_mode: bool | None


class GpuControl(Protocol):
    def uuids(self) -> list[str]:
        """Every GPU of this host, in NVML order."""
        ...

    def constraints(self, uuid: str) -> GpuConstraints: ...

    def state(self, uuid: str) -> LeverState: ...

    def set_power_limit_w(self, uuid: str, watts: float) -> None: ...

    def lock_sm_clocks(self, uuid: str, lo_mhz: int, hi_mhz: int) -> None: ...

    def reset_sm_clocks(self, uuid: str) -> None: ...

    def lock_memory_clocks(self, uuid: str, lo_mhz: int, hi_mhz: int) -> None: ...

    def reset_memory_clocks(self, uuid: str) -> None: ...

    def set_persistence_mode(self, uuid: str, enabled: bool) -> None: ...


def _text(v: str | bytes) -> str:
    return v.decode() if isinstance(v, bytes) else v


class NvmlGpuControl:
    """GpuControl through nvidia-ml-py (pynvml)."""

    def __init__(self) -> None:
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as e:  # noqa: BLE001 - library missing, no driver, no GPU
            raise ControlUnavailable(f"NVML is not available ({e})") from None
        self._nvml = pynvml
        self._handles: dict[str, Any] = {}

    def _h(self, uuid: str, setting: str = "gpu") -> Any:
        if uuid not in self._handles:
            self._handles[uuid] = self._call(setting, uuid, self._nvml.nvmlDeviceGetHandleByUUID, uuid)
        return self._handles[uuid]

    def _call(self, setting: str, uuid: str, fn: Callable[..., Any], *args: Any) -> Any:
        nvml = self._nvml
        try:
            return fn(*args)
        except nvml.NVMLError as e:
            denied = getattr(e, "value", None) == nvml.NVML_ERROR_NO_PERMISSION
            raise ControlError(setting, uuid, str(e), no_permission=denied) from None
        except AttributeError as e:  # a binding or driver without the function
            raise ControlError(setting, uuid, f"not offered by this NVML ({e})") from None

    def uuids(self) -> list[str]:
        nvml = self._nvml
        return [_text(nvml.nvmlDeviceGetUUID(nvml.nvmlDeviceGetHandleByIndex(i)))
                for i in range(nvml.nvmlDeviceGetCount())]

    def constraints(self, uuid: str) -> GpuConstraints:
        nvml, h = self._nvml, self._h(uuid)
        name = _text(nvml.nvmlDeviceGetName(h))
        try:
            lo, hi = nvml.nvmlDeviceGetPowerManagementLimitConstraints(h)
            power: tuple[float, float] | None = (lo / 1000.0, hi / 1000.0)  # mW
        except nvml.NVMLError:
            power = None
        try:
            mem = sorted({int(c) for c in nvml.nvmlDeviceGetSupportedMemoryClocks(h)})
            sm = sorted({int(c) for m in mem for c in nvml.nvmlDeviceGetSupportedGraphicsClocks(h, m)})
        except nvml.NVMLError:
            mem, sm = [], []
        return GpuConstraints(name, power, tuple(sm), tuple(mem))

    def state(self, uuid: str) -> LeverState:
        nvml, h = self._nvml, self._h(uuid)
        try:
            power: float | None = nvml.nvmlDeviceGetPowerManagementLimit(h) / 1000.0
        except nvml.NVMLError:
            power = None
        try:
            persistence: bool | None = nvml.nvmlDeviceGetPersistenceMode(h) == nvml.NVML_FEATURE_ENABLED
        except nvml.NVMLError:
            persistence = None
        return LeverState(power_limit_w=power, persistence_mode=persistence)

    def set_power_limit_w(self, uuid: str, watts: float) -> None:
        self._call("gpu.power_limit_w", uuid, self._nvml.nvmlDeviceSetPowerManagementLimit,
                   self._h(uuid), int(round(watts * 1000)))

    def lock_sm_clocks(self, uuid: str, lo_mhz: int, hi_mhz: int) -> None:
        self._call("gpu.sm_clocks_mhz", uuid, self._nvml.nvmlDeviceSetGpuLockedClocks, self._h(uuid), lo_mhz, hi_mhz)

    def reset_sm_clocks(self, uuid: str) -> None:
        self._call("gpu.sm_clocks_mhz", uuid, self._nvml.nvmlDeviceResetGpuLockedClocks, self._h(uuid))

    def lock_memory_clocks(self, uuid: str, lo_mhz: int, hi_mhz: int) -> None:
        self._call("gpu.memory_clocks_mhz", uuid, self._nvml.nvmlDeviceSetMemoryLockedClocks,
                   self._h(uuid), lo_mhz, hi_mhz)

    def reset_memory_clocks(self, uuid: str) -> None:
        self._call("gpu.memory_clocks_mhz", uuid, self._nvml.nvmlDeviceResetMemoryLockedClocks, self._h(uuid))

    def set_persistence_mode(self, uuid: str, enabled: bool) -> None:
        nvml = self._nvml
        mode = nvml.NVML_FEATURE_ENABLED if enabled else nvml.NVML_FEATURE_DISABLED
        self._call("gpu.persistence_mode", uuid, nvml.nvmlDeviceSetPersistenceMode, self._h(uuid), mode)


def open_control() -> GpuControl:
    """This host's GPU control; ControlUnavailable (with the reason) where there is none.
    Every caller reaches it through this module attribute, so a test can put a fake here."""
    return NvmlGpuControl()
