"""Fakes of the hardware this machine doesn't have, named as such.

- FakeGpu stands in for an NVML GPU (backends.harness.gpu.GpuDevice) and replays
  a scripted trace over wall time; FakeGpuInventory is a host's set of them, as CUDA
  lists them (gpu.cuda_uuids' `visible`) and NVML opens them (gpu.discover_nvml).
- make_powercap_tree builds real files in a real directory, laid out like Linux
  /sys/class/powercap (RAPL), for RaplMeter to read.
- fake_zeus_modules builds stand-in `zeus` / `zeus.monitor` modules to put in
  sys.modules, for ZeusMeter (zeus itself is not installed here).
"""

from __future__ import annotations

import os
import time
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from llenergymeasure.backends.harness.gpu import POWER_INSTANT, CounterUnsupported, GpuDiscovery

# A scripted quantity: a constant, a function of seconds since the fake started,
# or steps [(t_s, value), ...] where each value holds from its t_s to the next.
Trace = Any


def at(trace: Trace, t: float) -> Any:
    """A trace's value t seconds in."""
    if callable(trace):
        return trace(t)
    if isinstance(trace, list):
        value = trace[0][1]
        for t_s, v in trace:
            if t_s > t:
                break
            value = v
        return value
    return trace


class FakeGpu:
    """Fake NVML GPU. Every reading is a trace over seconds since construction
    (or `restart()`), on `clock` (default time.perf_counter, the meters' clock).

    counter: False -> total_energy_mj raises CounterUnsupported (pre-Volta GPU).
    energy_mj: counter trace; by default the integral of a constant `watts`.
    power: power trace in W (None = a failed reading); default `watts`.
    A reading that is None models a capability the GPU doesn't offer.
    """

    def __init__(self, uuid: str = "GPU-fake-0", watts: float = 100.0, *, index: int = 0,
                 name: str = "FakeGPU", counter: bool = True, energy_mj: Trace = None,
                 power: Trace = None, power_kind: str | None = POWER_INSTANT,
                 temperature: Trace = 40.0, memory_mb: Trace = 1000.0,
                 utilization: Trace = 50.0, sm_clock: Trace = 1980.0, mem_clock: Trace = 2619.0,
                 throttle: Trace = (), pids: Trace = (), persistence: bool | None = True,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.index, self.name, self.uuid = index, name, uuid
        self.watts, self.counter = watts, counter
        self.energy_trace = energy_mj if energy_mj is not None else (lambda t: t * watts * 1000)
        self.power_trace = power if power is not None else watts
        self.power_kind = power_kind
        self.traces = dict(temperature=temperature, memory=memory_mb, utilization=utilization,
                           sm_clock=sm_clock, mem_clock=mem_clock, throttle=throttle, pids=pids)
        self.persistence = persistence
        self.clock = clock
        self.power_reads = 0
        self.restart()

    def restart(self) -> None:
        self.t0 = self.clock()

    def now(self) -> float:
        return self.clock() - self.t0

    def _get(self, key: str) -> Any:
        return at(self.traces[key], self.now())

    def total_energy_mj(self) -> int:
        if not self.counter:
            raise CounterUnsupported(f"{self.name}: Not Supported")
        return int(at(self.energy_trace, self.now()))

    def power_w(self) -> float | None:
        self.power_reads += 1
        return at(self.power_trace, self.now())

    def temperature_c(self) -> float | None:
        return self._get("temperature")

    def memory_used_mb(self) -> float | None:
        return self._get("memory")

    def utilization_pct(self) -> float | None:
        return self._get("utilization")

    def sm_clock_mhz(self) -> float | None:
        return self._get("sm_clock")

    def mem_clock_mhz(self) -> float | None:
        return self._get("mem_clock")

    def throttle_reasons(self) -> list[str] | None:
        v = self._get("throttle")
        return None if v is None else list(v)

    def process_pids(self) -> list[int] | None:
        v = self._get("pids")
        return None if v is None else sorted(v)

    def persistence_mode(self) -> bool | None:
        return self.persistence


class FakeGpuInventory:
    """Fake GPUs of one host. `visible` lists the UUIDs CUDA sees, in CUDA order
    (default: every GPU; a runner's CUDA_VISIBLE_DEVICES would narrow it);
    `discover` opens GPUs by UUID as discover_nvml does, failing on an unknown one."""

    def __init__(self, gpus: list[FakeGpu], visible: list[str] | None = None) -> None:
        self.gpus = {g.uuid: g for g in gpus}
        self._visible = visible if visible is not None else [g.uuid for g in gpus]
        self.opened: list[list[str]] = []

    def visible(self) -> list[str]:
        return list(self._visible)

    def discover(self, uuids: list[str]) -> GpuDiscovery:
        self.opened.append(list(uuids))
        missing = [u for u in uuids if u not in self.gpus]
        if missing:
            return GpuDiscovery([], unavailable_reason=f"NVML cannot open GPU {missing[0]} (Not Found)")
        devices = [self.gpus[u] for u in uuids]
        for i, g in enumerate(devices):
            g.index = i  # as discover_nvml: the position in the run's list
        return GpuDiscovery(devices, driver_version="fake-570.00")


# --- powercap (RAPL) ----------------------------------------------------------------

MAX_RANGE_UJ = 262143328850  # a typical package max_energy_range_uj


def make_powercap_tree(tmp_path: Path, zones: dict[str, dict[str, Any]]) -> Path:
    """A fake /sys/class/powercap under tmp_path; returns that root.

    zones: zone id ("intel-rapl:0", "intel-rapl:0:2") -> {"name": "package-0",
    "energy_uj": int, "max_energy_range_uj": int (default MAX_RANGE_UJ),
    "unreadable": True (energy_uj mode 000), "energy_uj_missing": True}.
    As in sysfs, zones live nested under a device directory and the class
    directory holds one symlink per zone (subzones included).
    """
    devices = tmp_path / "devices" / "virtual" / "powercap" / "intel-rapl"
    root = tmp_path / "class" / "powercap"
    root.mkdir(parents=True, exist_ok=True)
    devices.mkdir(parents=True, exist_ok=True)
    (devices / "enabled").write_text("1\n")  # the control type: no energy of its own
    (root / "intel-rapl").symlink_to(devices)
    for zone_id, spec in zones.items():
        parts = zone_id.split(":")
        parent = devices if len(parts) == 2 else devices / ":".join(parts[:2])
        d = parent / zone_id
        d.mkdir(parents=True, exist_ok=True)
        (d / "name").write_text(spec["name"] + "\n")
        (d / "max_energy_range_uj").write_text(f"{spec.get('max_energy_range_uj', MAX_RANGE_UJ)}\n")
        if not spec.get("energy_uj_missing"):
            (d / "energy_uj").write_text(f"{spec.get('energy_uj', 0)}\n")
            if spec.get("unreadable"):
                os.chmod(d / "energy_uj", 0)  # as sysfs since Linux 5.10: root only (0400)
        (root / zone_id).symlink_to(d)
    return root


def set_energy_uj(root: Path, zone_id: str, value: int) -> None:
    """Advance (or wrap) a fake zone's counter."""
    (root / zone_id / "energy_uj").write_text(f"{value}\n")


@contextmanager
def unprivileged(uid: int = 65534) -> Iterator[None]:
    """Run the block with a non-root effective uid, so file permissions apply (root
    reads a mode-000 file regardless). Files it touches must be reachable by uid."""
    if os.geteuid() != 0:
        yield
        return
    os.setegid(uid)
    os.seteuid(uid)
    try:
        yield
    finally:
        os.seteuid(0)
        os.setegid(0)


# --- zeus ---------------------------------------------------------------------------


def fake_zeus_modules(gpu_energy: Callable[[list[int]], dict[int, float]],
                      calls: list | None = None) -> dict[str, types.ModuleType]:
    """Stand-ins for `zeus` and `zeus.monitor` whose FakeZeusMonitor reports
    gpu_energy(gpu_indices) for every window; calls records what it was asked."""
    calls = calls if calls is not None else []

    class FakeZeusMonitor:
        def __init__(self, gpu_indices=None, cpu_indices=None, **kw: Any) -> None:
            calls.append(("init", gpu_indices, cpu_indices))
            self.gpu_indices = gpu_indices or []
            self.windows: dict[str, float] = {}

        def begin_window(self, key: str, sync_execution: bool = True) -> None:
            calls.append(("begin", key, sync_execution))
            self.windows[key] = time.time()

        def end_window(self, key: str, sync_execution: bool = True, cancel: bool = False):
            calls.append(("end", key, sync_execution))
            t = time.time() - self.windows.pop(key)
            return types.SimpleNamespace(time=t, gpu_energy=gpu_energy(self.gpu_indices))

    zeus = types.ModuleType("zeus")
    monitor = types.ModuleType("zeus.monitor")
    monitor.ZeusMonitor = FakeZeusMonitor
    zeus.monitor = monitor
    return {"zeus": zeus, "zeus.monitor": monitor}
