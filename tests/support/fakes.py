"""Fakes of the hardware this machine doesn't have, named as such.

- FakeGpu stands in for an NVML GPU (backends.harness.gpu.GpuDevice) and replays
  a scripted trace over wall time; FakeGpuInventory is a host's set of them, as CUDA
  lists them (gpu.cuda_uuids' `visible`) and NVML opens them (gpu.discover_nvml).
  FakeThermalLoad gives a FakeGpu physics instead of a script: power, energy and a
  first-order temperature that follow whether a (fake) pass is running.
- make_powercap_tree builds real files in a real directory, laid out like Linux
  /sys/class/powercap (RAPL), for RaplMeter to read.
- fake_zeus_modules builds stand-in `zeus` / `zeus.monitor` modules to put in
  sys.modules, for ZeusMeter (zeus itself is not installed here).
"""

from __future__ import annotations

import math
import os
import threading
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
    counter_tick_s: the counter updates only every this many seconds (NVML: about
    100 ms); a read between updates returns the last update's value. None: continuous.
    load: a FakeThermalLoad; power, temperature and the counter then come from it.
    power_limit_w, app_clocks_mhz (SM, memory), ecc, mig: the settings the environment
    snapshot reads (defaults: an H100/H200-like board; None = not supported).
    """

    def __init__(self, uuid: str = "GPU-fake-0", watts: float = 100.0, *, index: int = 0,
                 name: str = "FakeGPU", counter: bool = True, energy_mj: Trace = None,
                 power: Trace = None, power_kind: str | None = POWER_INSTANT,
                 temperature: Trace = 40.0, memory_mb: Trace = 1000.0,
                 utilization: Trace = 50.0, sm_clock: Trace = 1980.0, mem_clock: Trace = 2619.0,
                 throttle: Trace = (), pids: Trace = (), persistence: bool | None = True,
                 power_limit_w: float | None = 700.0,
                 app_clocks_mhz: tuple[float | None, float | None] = (1980.0, 2619.0),
                 ecc: bool | None = True, mig: bool | None = False,
                 clock: Callable[[], float] = time.perf_counter, counter_tick_s: float | None = None,
                 load: FakeThermalLoad | None = None) -> None:
        self.index, self.name, self.uuid = index, name, uuid
        self.watts, self.counter = watts, counter
        self.energy_trace = energy_mj if energy_mj is not None else (lambda t: t * watts * 1000)
        self.power_trace = power if power is not None else watts
        self.power_kind = power_kind
        self.traces = dict(temperature=temperature, memory=memory_mb, utilization=utilization,
                           sm_clock=sm_clock, mem_clock=mem_clock, throttle=throttle, pids=pids)
        self.persistence = persistence
        self.settings = dict(power_limit_w=power_limit_w, app_clocks_mhz=app_clocks_mhz, ecc=ecc, mig=mig)
        self.clock = clock
        self.power_reads = 0
        self.counter_tick_s, self.load = counter_tick_s, load
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
        t = self.now()
        if self.counter_tick_s:  # the last update's value (the epsilon absorbs float steps)
            t = math.floor(t / self.counter_tick_s + 1e-9) * self.counter_tick_s
        if self.load is not None:
            return int(self.load.energy_j(self.t0 + t) * 1000)
        return int(at(self.energy_trace, t))

    def power_w(self) -> float | None:
        self.power_reads += 1
        if self.load is not None:
            return self.load.power_w(self.clock())
        return at(self.power_trace, self.now())

    def temperature_c(self) -> float | None:
        if self.load is not None:
            return self.load.temperature_c(self.clock())
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

    def enforced_power_limit_w(self) -> float | None:
        return self.settings["power_limit_w"]

    def applications_clocks_mhz(self) -> tuple[float | None, float | None]:
        return self.settings["app_clocks_mhz"]

    def ecc_enabled(self) -> bool | None:
        return self.settings["ecc"]

    def mig_enabled(self) -> bool | None:
        return self.settings["mig"]


class FakeThermalLoad:
    """Fake GPU physics for plateau tests (no GPU here). Power is p_load_w while a pass
    runs (a fake backend holds `running()`) and p_idle_w otherwise; temperature is first
    order: under load it approaches t_load_c = t_idle_c + k_c_per_w * p_load_w (the loaded
    plateau) with time constant tau_s, and idle it cools back toward t_idle_c. Energy is
    the exact integral of power. All in closed form on `clock` (absolute readings), so
    any instant can be asked, from any thread (the sampler's)."""

    def __init__(self, *, t_idle_c: float = 35.0, k_c_per_w: float = 0.1, p_idle_w: float = 60.0,
                 p_load_w: float = 300.0, tau_s: float = 0.25,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.t_idle_c, self.k_c_per_w, self.tau_s = t_idle_c, k_c_per_w, tau_s
        self.p_idle_w, self.p_load_w = p_idle_w, p_load_w
        self.clock = clock
        self._lock = threading.Lock()
        # (start time, busy, temperature at start, energy J at start), in time order
        self._segments: list[tuple[float, bool, float, float]] = [(clock(), False, t_idle_c, 0.0)]
        self.passes: list[tuple[float, float]] = []  # (start, end) of every pass run

    @property
    def t_load_c(self) -> float:
        """The loaded plateau: where temperature settles if passes never stop."""
        return self.t_idle_c + self.k_c_per_w * self.p_load_w

    def _segment(self, t: float) -> tuple[float, bool, float, float]:
        with self._lock:
            seg = self._segments[0]
            for s in self._segments:
                if s[0] > t:
                    break
                seg = s
            return seg

    def power_w(self, t: float) -> float:
        return self.p_load_w if self._segment(t)[1] else self.p_idle_w

    def temperature_c(self, t: float) -> float:
        t0, busy, temp0, _ = self._segment(t)
        target = self.t_load_c if busy else self.t_idle_c
        return target + (temp0 - target) * math.exp(-max(0.0, t - t0) / self.tau_s)

    def energy_j(self, t: float) -> float:
        t0, busy, _, e0 = self._segment(t)
        return e0 + max(0.0, t - t0) * (self.p_load_w if busy else self.p_idle_w)

    def set_busy(self, busy: bool) -> float:
        t = self.clock()
        temp, energy = self.temperature_c(t), self.energy_j(t)
        with self._lock:
            self._segments.append((t, busy, temp, energy))
        return t

    @contextmanager
    def running(self) -> Iterator[None]:
        """The GPU is under load (a pass runs) for the block."""
        start = self.set_busy(True)
        try:
            yield
        finally:
            self.passes.append((start, self.set_busy(False)))


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


# --- GPU control (gpu: settings) -----------------------------------------------------

import json  # noqa: E402

from llenergymeasure.orchestrator.execution.gpu_control import (  # noqa: E402
    ControlError, GpuConstraints, LeverState,
)

NO_PERMISSION = "Insufficient Permissions"  # what NVML says for NVML_ERROR_NO_PERMISSION


def fake_gpu_state(uuid: str, *, name: str = "FakeGPU H200", power_limit_w: float = 700.0,
                   power_range_w: tuple[float, float] = (200.0, 700.0),
                   sm_clocks_mhz: tuple[int, ...] = tuple(range(345, 1981, 15)),
                   memory_clocks_mhz: tuple[int, ...] = (1593, 2619, 3201),
                   persistence: bool = True) -> dict[str, Any]:
    """One fake GPU's settable state, as FakeGpuControl keeps it (JSON-serialisable)."""
    return {"uuid": uuid, "name": name, "power_limit_w": power_limit_w, "power_range_w": list(power_range_w),
            "sm_clocks_mhz": list(sm_clocks_mhz), "memory_clocks_mhz": list(memory_clocks_mhz),
            "sm_locked": None, "memory_locked": None, "persistence": persistence,
            "deny": [], "refuse": []}


class FakeGpuControl:
    """Fake of a host's GPU control (orchestrator.execution.gpu_control.GpuControl): GPUs
    with a settable power limit (within a min/max), lockable SM and memory clocks (of a
    supported list) and persistence mode. Per GPU, `deny` lists gpu.* settings NVML refuses
    for want of permission (NVML_ERROR_NO_PERMISSION) and `refuse` ones it refuses
    otherwise ("Not Supported"), e.g. ["gpu.sm_clocks_mhz"].

    With `state_path` the state lives in that JSON file, read before and written after
    every call, so that several processes (an orchestrator that is killed, the next llem)
    see one host. `calls` logs every change as (operation, uuid, *arguments)."""

    def __init__(self, gpus: list[dict[str, Any]] | None = None, state_path: Path | None = None) -> None:
        self.state_path = state_path
        if state_path is not None and state_path.exists():
            self._load()
        else:
            self.gpus = {g["uuid"]: g for g in (gpus or [fake_gpu_state("GPU-fake-0"), fake_gpu_state("GPU-fake-1")])}
            self.calls: list[list[Any]] = []
            self._save()

    def _load(self) -> None:
        if self.state_path is not None:
            data = json.loads(self.state_path.read_text())
            self.gpus, self.calls = {g["uuid"]: g for g in data["gpus"]}, data["calls"]

    def _save(self) -> None:
        if self.state_path is not None:
            tmp = self.state_path.with_name(self.state_path.name + f".{os.getpid()}.tmp")
            tmp.write_text(json.dumps({"gpus": list(self.gpus.values()), "calls": self.calls}, indent=1))
            os.replace(tmp, self.state_path)  # another process never reads half a state

    def gpu(self, uuid: str) -> dict[str, Any]:
        self._load()
        return self.gpus[uuid]

    def _change(self, setting: str, uuid: str, op: str, *args: Any) -> dict[str, Any]:
        self._load()
        g = self.gpus.get(uuid)
        if g is None:
            raise ControlError(setting, uuid, "Not Found")
        if setting in g["deny"]:
            raise ControlError(setting, uuid, NO_PERMISSION, no_permission=True)
        if setting in g["refuse"]:
            raise ControlError(setting, uuid, "Not Supported")
        self.calls.append([op, uuid, *args])
        return g

    def uuids(self) -> list[str]:
        self._load()
        return list(self.gpus)

    def constraints(self, uuid: str) -> GpuConstraints:
        g = self.gpu(uuid)
        return GpuConstraints(g["name"], tuple(g["power_range_w"]), tuple(g["sm_clocks_mhz"]),
                              tuple(g["memory_clocks_mhz"]))

    def state(self, uuid: str) -> LeverState:
        g = self.gpu(uuid)
        return LeverState(power_limit_w=g["power_limit_w"], persistence_mode=g["persistence"])

    def set_power_limit_w(self, uuid: str, watts: float) -> None:
        g = self._change("gpu.power_limit_w", uuid, "set_power_limit_w", watts)
        lo, hi = g["power_range_w"]
        if not lo <= watts <= hi:
            self.calls.pop()
            raise ControlError("gpu.power_limit_w", uuid, "Invalid Argument")
        g["power_limit_w"] = watts
        self._save()

    def lock_sm_clocks(self, uuid: str, lo_mhz: int, hi_mhz: int) -> None:
        self._change("gpu.sm_clocks_mhz", uuid, "lock_sm_clocks", lo_mhz, hi_mhz)["sm_locked"] = [lo_mhz, hi_mhz]
        self._save()

    def reset_sm_clocks(self, uuid: str) -> None:
        self._change("gpu.sm_clocks_mhz", uuid, "reset_sm_clocks")["sm_locked"] = None
        self._save()

    def lock_memory_clocks(self, uuid: str, lo_mhz: int, hi_mhz: int) -> None:
        g = self._change("gpu.memory_clocks_mhz", uuid, "lock_memory_clocks", lo_mhz, hi_mhz)
        g["memory_locked"] = [lo_mhz, hi_mhz]
        self._save()

    def reset_memory_clocks(self, uuid: str) -> None:
        self._change("gpu.memory_clocks_mhz", uuid, "reset_memory_clocks")["memory_locked"] = None
        self._save()

    def set_persistence_mode(self, uuid: str, enabled: bool) -> None:
        self._change("gpu.persistence_mode", uuid, "set_persistence_mode", enabled)["persistence"] = enabled
        self._save()

    def changes(self, uuid: str | None = None) -> list[list[Any]]:
        """The logged changes (of one GPU)."""
        self._load()
        return [c for c in self.calls if uuid is None or c[1] == uuid]
