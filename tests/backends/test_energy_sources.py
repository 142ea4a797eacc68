"""Energy sources and their selection: NVML counter, NVML power polling, Zeus, RAPL.

No GPU, NVML, RAPL or zeus here: GPUs are FakeGpu, RAPL is a fake powercap tree of
real files, zeus is a fake module in sys.modules (all from tests/support/fakes.py).
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
import types
from pathlib import Path

import pytest

from llenergymeasure.backends.harness import energy
from llenergymeasure.backends.harness.energy import (
    NvmlCounterMeter, NvmlPollingMeter, RaplMeter, UnavailableMeter, ZeusMeter,
    integrate_trapezoid, measured, select_cpu_meter, select_gpu_meter, select_meter,
)
from llenergymeasure.backends.harness.gpu import POWER_INSTANT, POWER_USAGE, GpuDiscovery, NvmlGpu, throttle_names
from llenergymeasure.backends.harness.validity import gap_warnings
from tests.support.fakes import (
    FakeGpu, at, fake_zeus_modules, make_powercap_tree, set_energy_uj, unprivileged,
)

# --- NVML counter ---------------------------------------------------------------


class SteppedClock:
    """Time moves when the code under test sleeps, or when the test sets it."""

    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, s: float) -> None:
        self.t += s


def test_counter_path_reads_scripted_counter_steps():
    # The counter advances in steps (NVML updates it every few tens of ms); each window edge
    # is stamped at the next step of every GPU (NvmlCounterMeter), so only whole steps count.
    clock = SteppedClock()
    a = FakeGpu("GPU-a", energy_mj=[(0, 1_000_000), (0.1, 1_000_500), (0.15, 1_002_000), (0.3, 1_002_700)],
                clock=clock)
    b = FakeGpu("GPU-b", energy_mj=[(0, 7_000), (0.1, 10_000), (0.3, 13_000)], clock=clock)
    meter = select_gpu_meter(GpuDiscovery([a, b]))
    assert isinstance(meter, NvmlCounterMeter) and meter.source == "nvml_total_energy_counter"
    assert meter.fallback_reason is None
    meter = NvmlCounterMeter([a, b], clock=clock, sleep=clock.sleep)
    with measured(meter) as out:
        clock.t = 0.2  # the window's work; its end edge waits for the steps at 0.3 s
    assert out[0].per_device_j == {"GPU-a": pytest.approx(2.2), "GPU-b": 3.0}
    assert out[0].energy_j == pytest.approx(5.2) and out[0].coverage is None
    assert (meter.started_at, meter.stopped_at) == (pytest.approx(0.1, abs=0.002), pytest.approx(0.3, abs=0.002))


def test_one_gpu_without_counter_moves_every_gpu_to_polling():
    gpus = [FakeGpu("GPU-a"), FakeGpu("GPU-b", counter=False)]
    meter = select_gpu_meter(GpuDiscovery(gpus), "nvml")
    assert isinstance(meter, NvmlPollingMeter) and meter.devices == gpus  # one source, not a mix


# --- NVML power polling -----------------------------------------------------------


def _ramp_integral(w0: float, slope: float, a: float, b: float) -> float:
    """Exact joules of P(t) = w0 + slope * t over [a, b]."""
    return w0 * (b - a) + slope * (b * b - a * a) / 2


def test_polling_integrates_a_ramp_like_the_analytic_integral():
    a = FakeGpu("GPU-a", counter=False, power=lambda t: 100 + 400 * t)
    b = FakeGpu("GPU-b", counter=False, power=lambda t: 50 + 1000 * t, power_kind=POWER_USAGE)
    meter = select_gpu_meter(GpuDiscovery([a, b]))
    assert isinstance(meter, NvmlPollingMeter) and meter.source == "nvml_power_polling"
    assert "not supported" in meter.fallback_reason and "instant, power_usage" in meter.fallback_reason
    with measured(meter) as out:
        time.sleep(0.3)
    r = out[0]
    for gpu, w0, slope in ((a, 100, 400), (b, 50, 1000)):
        lo, hi = meter.started_at - gpu.t0, meter.stopped_at - gpu.t0
        # Trapezoids are exact on a line; a rectangle rule would be off by ~2% here.
        assert r.per_device_j[gpu.uuid] == pytest.approx(_ramp_integral(w0, slope, lo, hi), rel=1e-3)
    # a window inside the polled one, over its own edges (gpu_check: the counter's stamps)
    t0, t1 = meter.started_at + 0.1, meter.started_at + 0.2
    inner = meter.energy_between(t0, t1)
    for gpu, w0, slope in ((a, 100, 400), (b, 50, 1000)):
        exact = _ramp_integral(w0, slope, t0 - gpu.t0, t1 - gpu.t0)
        assert inner[gpu.uuid] == pytest.approx(exact, rel=1e-3) and inner[gpu.uuid] < r.per_device_j[gpu.uuid] / 2
    assert r.energy_j == pytest.approx(sum(r.per_device_j.values()))
    assert r.duration_s == pytest.approx(meter.stopped_at - meter.started_at)
    assert a.power_reads > 10 and r.missing_samples == 0 and r.coverage > 0.5


def test_polling_reads_both_window_edges():
    """With an interval longer than the window the thread never polls: the two
    edge readings alone give the exact trapezoid of a ramp."""
    gpu = FakeGpu("GPU-a", counter=False, power=lambda t: 100 + 4000 * t)
    meter = NvmlPollingMeter([gpu], interval_s=10.0)
    with measured(meter) as out:
        time.sleep(0.05)
    assert gpu.power_reads == 2 and out[0].missing_samples == 0 and out[0].coverage == 1.0
    lo, hi = meter.started_at - gpu.t0, meter.stopped_at - gpu.t0
    assert out[0].energy_j == pytest.approx(_ramp_integral(100, 4000, lo, hi), rel=1e-3)


def test_polling_counts_missing_samples_and_bridges_the_gap():
    gap = (0.10, 0.25)  # seconds after the fake starts: readings fail (None)
    gpu = FakeGpu("GPU-a", counter=False,
                  power=lambda t: None if gap[0] <= t < gap[1] else 200 + 300 * t)
    meter = NvmlPollingMeter([gpu], interval_s=0.01)
    with measured(meter) as out:
        time.sleep(0.4)
    r = out[0]
    assert r.missing_samples >= 5 and meter.missing_samples == r.missing_samples
    # ~15 of ~41 expected samples fell in the gap
    assert r.coverage == meter.coverage and r.coverage < 0.9
    lo, hi = meter.started_at - gpu.t0, meter.stopped_at - gpu.t0
    # The trapezoid spans the gap between the readings around it: exact on a line.
    assert r.energy_j == pytest.approx(_ramp_integral(200, 300, lo, hi), rel=1e-3)
    # the hole it bridged: no reading from before t=0.10 to after t=0.25
    assert r.longest_gap_s >= gap[1] - gap[0]
    assert codes(gap_warnings({"power polling": (r.longest_gap_s, meter.interval_s)})) == {"sampling_gap"}


def codes(warnings):
    return {w.split(":", 1)[0] for w in warnings}


def test_polling_without_any_reading_reports_no_energy_and_why():
    gpus = [FakeGpu("GPU-a", counter=False), FakeGpu("GPU-b", counter=False, power=lambda t: None)]
    meter = NvmlPollingMeter(gpus)
    with measured(meter) as out:
        time.sleep(0.05)
    r = out[0]
    assert r.energy_j is None and "from GPU-b" in meter.unavailable_reason  # no partial total
    assert r.per_device_j.keys() == {"GPU-a"} and r.coverage == 0.0 and r.missing_samples >= 2


def test_trapezoid_spans_gaps_and_holds_the_edges():
    samples = [(1.0, None), (1.5, 150.0), (2.0, None), (3.0, 300.0)]
    # held 150 over [1, 1.5], trapezoid 150->300 over [1.5, 3], held 300 over [3, 4]
    assert integrate_trapezoid(samples, 1.0, 4.0) == pytest.approx(75 + 337.5 + 300)
    assert integrate_trapezoid([(1.0, None)], 0.0, 2.0) is None
    assert integrate_trapezoid([(0.5, 10.0), (5.0, 99.0)], 1.0, 2.0) is None  # none inside


# --- RAPL ------------------------------------------------------------------------


def _rapl_tree(base: Path, overrides: dict | None = None) -> Path:
    zones = {
        "intel-rapl:0": {"name": "package-0", "energy_uj": 65_000_000_000 - 1_000_000,
                         "max_energy_range_uj": 65_000_000_000},
        "intel-rapl:0:0": {"name": "core", "energy_uj": 1_000_000},
        "intel-rapl:0:1": {"name": "uncore", "energy_uj": 1_000_000},
        "intel-rapl:0:2": {"name": "dram", "energy_uj": 10_000_000},
        "intel-rapl:1": {"name": "package-1", "energy_uj": 0},
        "intel-rapl:1:0": {"name": "core", "energy_uj": 0},
        "intel-rapl:2": {"name": "psys", "energy_uj": 0},  # platform: contains the rest
    }
    for zone, spec in (overrides or {}).items():
        zones[zone].update(spec)
    return make_powercap_tree(base, zones)


def test_rapl_package_and_dram_with_wraparound_and_no_double_count(tmp_path):
    root = _rapl_tree(tmp_path)
    meter = select_cpu_meter(root)
    assert isinstance(meter, RaplMeter) and meter.source == "rapl" and meter.fallback_reason is None
    assert [z.key for z in meter.zones] == ["package-0", "dram-0", "package-1"]
    meter.start()
    set_energy_uj(root, "intel-rapl:0", 2_000_000)  # wrapped: 1 J before, 2 J after
    set_energy_uj(root, "intel-rapl:0:0", 900_000_000)  # core: inside the package already
    set_energy_uj(root, "intel-rapl:0:1", 900_000_000)
    set_energy_uj(root, "intel-rapl:0:2", 15_000_000)
    set_energy_uj(root, "intel-rapl:1", 4_000_000)
    set_energy_uj(root, "intel-rapl:2", 900_000_000)  # psys: not counted either
    r = meter.stop()
    assert r.per_device_j == pytest.approx({"package-0": 3.0, "dram-0": 5.0, "package-1": 4.0})
    assert r.energy_j == pytest.approx(12.0)


def test_rapl_nested_layout_is_read_too(tmp_path):
    """Pointed at the device directory (zones nested, no flat symlinks)."""
    _rapl_tree(tmp_path)
    meter = select_cpu_meter(tmp_path / "devices" / "virtual" / "powercap" / "intel-rapl")
    assert [z.key for z in meter.zones] == ["package-0", "dram-0", "package-1"]


@pytest.fixture
def reachable_dir(tmp_path):
    """A directory a non-root uid can traverse (pytest's tmp root is 0700 for root)."""
    if os.geteuid() != 0:
        yield tmp_path
        return
    d = Path(tempfile.mkdtemp(prefix="llem-powercap-"))
    os.chmod(d, 0o755)
    try:
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_rapl_unreadable_dram_is_left_out_with_reason(reachable_dir):
    root = _rapl_tree(reachable_dir, {"intel-rapl:0:2": {"unreadable": True}})
    with unprivileged():
        meter = select_cpu_meter(root)
        meter.start()
        r = meter.stop()
    assert isinstance(meter, RaplMeter) and set(r.per_device_j) == {"package-0", "package-1"}
    assert "intel-rapl:0:2 (dram-0)" in meter.fallback_reason
    assert "Permission denied" in meter.fallback_reason


def test_rapl_no_readable_package_is_a_reason_not_a_crash(reachable_dir, tmp_path):
    root = _rapl_tree(reachable_dir, {"intel-rapl:0": {"unreadable": True},
                                      "intel-rapl:1": {"unreadable": True}})
    with unprivileged():
        meter = select_cpu_meter(root)
    assert isinstance(meter, UnavailableMeter)
    assert meter.unavailable_reason.startswith("CPU energy (RAPL) cannot be read")
    assert "Permission denied" in meter.unavailable_reason and "package-1" in meter.unavailable_reason
    # any unreadable counter, not only permissions (here: the file is absent)
    gone = make_powercap_tree(tmp_path, {"intel-rapl:0": {"name": "package-0", "energy_uj_missing": True}})
    assert "No such file" in select_cpu_meter(gone).unavailable_reason
    assert "no intel-rapl package zones" in select_cpu_meter(tmp_path / "nothing").unavailable_reason


# --- Zeus ------------------------------------------------------------------------


@pytest.fixture
def no_zeus(monkeypatch):
    monkeypatch.setitem(sys.modules, "zeus", None)  # import raises ImportError
    monkeypatch.setitem(sys.modules, "zeus.monitor", None)


def _fake_zeus(monkeypatch, gpu_energy) -> list:
    calls: list = []
    for name, mod in fake_zeus_modules(gpu_energy, calls).items():
        monkeypatch.setitem(sys.modules, name, mod)
    return calls


def test_zeus_not_installed_falls_back_with_reason(no_zeus):
    meter = select_gpu_meter(GpuDiscovery([FakeGpu("GPU-a")]), "zeus")
    assert isinstance(meter, NvmlCounterMeter)
    assert meter.fallback_reason.startswith("zeus was requested but cannot measure: zeus is not installed")


def test_zeus_measuring_nothing_falls_back_with_reason(monkeypatch):
    calls = _fake_zeus(monkeypatch, lambda idx: {})  # what zeus returns without GPUs
    meter = select_gpu_meter(GpuDiscovery([FakeGpu("GPU-a", counter=False)]), "zeus")
    assert isinstance(meter, NvmlPollingMeter)
    assert "zeus measured no energy for GPU index(es) [0]" in meter.fallback_reason
    assert "total-energy counter is not supported" in meter.fallback_reason
    assert calls[0] == ("init", [0], [])  # zeus is kept off RAPL


def test_zeus_fallback_to_nothing_keeps_both_reasons(no_zeus):
    gpu = FakeGpu("GPU-a", counter=False, power=lambda t: None)
    meter = select_gpu_meter(GpuDiscovery([gpu]), "zeus")
    assert isinstance(meter, UnavailableMeter)
    assert "zeus is not installed" in meter.unavailable_reason
    assert "power is not readable" in meter.unavailable_reason


def test_zeus_that_measures_owns_the_window(monkeypatch):
    calls = _fake_zeus(monkeypatch, lambda idx: {i: 12.5 for i in idx})
    gpu = FakeGpu("GPU-a", counter=False)
    meter = select_meter("cuda:1", GpuDiscovery([gpu]), "zeus")
    assert isinstance(meter, ZeusMeter) and meter.source == "zeus"
    power_reads = gpu.power_reads
    with measured(meter) as out:
        pass
    assert out[0].per_device_j == {"GPU-a": 12.5} and out[0].energy_j == 12.5
    assert gpu.power_reads == power_reads  # nothing of ours measured beside zeus
    assert calls[0] == ("init", [1], [])  # CUDA index from the device string
    assert all(c[2] is False for c in calls[1:])  # the harness synchronises, not zeus


def test_unknown_preference_is_refused():
    with pytest.raises(ValueError, match="not one of"):
        select_gpu_meter(GpuDiscovery([]), "rapl")


# --- select_meter (what protocol.py calls) -----------------------------------------


def test_select_meter_cpu_uses_rapl_and_gpu_uses_nvml(tmp_path, monkeypatch):
    monkeypatch.setattr(energy, "POWERCAP_ROOT", _rapl_tree(tmp_path))
    assert isinstance(select_meter("cpu", GpuDiscovery([])), RaplMeter)
    assert isinstance(select_meter("cuda:0", GpuDiscovery([FakeGpu()])), NvmlCounterMeter)
    assert isinstance(select_meter("cuda:0", GpuDiscovery([FakeGpu(counter=False)])), NvmlPollingMeter)
    monkeypatch.setattr(energy, "POWERCAP_ROOT", tmp_path / "absent")
    cpu = select_meter("cpu", GpuDiscovery([]))
    assert cpu.source is None and "CPU" in cpu.unavailable_reason


# --- GPU readings ------------------------------------------------------------------


def test_throttle_names_ignore_idle_and_application_clocks():
    assert throttle_names(0x1 | 0x2) == []
    assert throttle_names(0x1 | 0x4 | 0x40 | 0x80 | 0x800) == [
        "sw_power_cap", "hw_thermal", "hw_power_brake", "unknown_0x800"]
    assert throttle_names(0x8 | 0x20) == ["hw_slowdown", "sw_thermal"]


def test_fake_gpu_replays_its_script():
    t = [0.0]
    gpu = FakeGpu(throttle=[(0, ()), (1.0, ("sw_thermal",))], pids=[(0, (1,)), (2.0, (1, 999))],
                  sm_clock=lambda s: 1980 - 10 * s, persistence=None, clock=lambda: t[0])
    assert gpu.throttle_reasons() == [] and gpu.process_pids() == [1] and gpu.sm_clock_mhz() == 1980
    t[0] = 2.5
    assert gpu.throttle_reasons() == ["sw_thermal"] and gpu.process_pids() == [1, 999]
    assert gpu.sm_clock_mhz() == 1955 and gpu.persistence_mode() is None
    assert at([(0, "a"), (1, "b")], 0.99) == "a"


@pytest.fixture
def nvml_binding(monkeypatch):
    """The installed pynvml with its C calls replaced (no NVML library here).
    monkeypatch refuses names the binding lacks, so the names NvmlGpu calls are checked."""
    import pynvml

    calls = types.SimpleNamespace(instant=pynvml.NVML_SUCCESS, event_reasons=True)

    def field_values(h, ids):
        v = (pynvml.c_nvmlFieldValue_t * len(ids))()
        v[0].fieldId, v[0].valueType = ids[0], pynvml.NVML_VALUE_TYPE_UNSIGNED_INT
        v[0].nvmlReturn, v[0].value.uiVal = calls.instant, 312_500
        return v

    def event_reasons(h):
        if not calls.event_reasons:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        return 0x1 | 0x4

    def not_supported(*a):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    fakes = {
        "nvmlDeviceGetName": lambda h: b"NVIDIA H100 80GB HBM3",
        "nvmlDeviceGetUUID": lambda h: "GPU-1234",
        "nvmlDeviceGetFieldValues": field_values,
        "nvmlDeviceGetPowerUsage": lambda h: 250_000,
        "nvmlDeviceGetTotalEnergyConsumption": not_supported,
        "nvmlDeviceGetClockInfo": lambda h, c: {pynvml.NVML_CLOCK_SM: 1980, pynvml.NVML_CLOCK_MEM: 2619}[c],
        "nvmlDeviceGetCurrentClocksEventReasons": event_reasons,
        "nvmlDeviceGetCurrentClocksThrottleReasons": lambda h: 0x40,
        "nvmlDeviceGetComputeRunningProcesses": lambda h: [types.SimpleNamespace(pid=p) for p in (42, 7, 42)],
        "nvmlDeviceGetPersistenceMode": lambda h: pynvml.NVML_FEATURE_ENABLED,
    }
    for name, fn in fakes.items():
        monkeypatch.setattr(pynvml, name, fn)  # raising=True: the binding must have it
    return calls


def test_nvml_gpu_reads_through_the_binding(nvml_binding):
    import pynvml

    from llenergymeasure.backends.harness.gpu import CounterUnsupported

    gpu = NvmlGpu(object(), 0)
    assert gpu.name == "NVIDIA H100 80GB HBM3" and gpu.power_kind == POWER_INSTANT
    assert gpu.power_w() == pytest.approx(312.5)  # the instant field, not the 1 s average
    assert gpu.sm_clock_mhz() == 1980 and gpu.mem_clock_mhz() == 2619
    assert gpu.throttle_reasons() == ["sw_power_cap"]
    assert gpu.process_pids() == [7, 42] and gpu.persistence_mode() is True
    with pytest.raises(CounterUnsupported):
        gpu.total_energy_mj()
    nvml_binding.event_reasons = False  # older driver: only the deprecated call
    assert gpu.throttle_reasons() == ["hw_thermal"]
    nvml_binding.instant = pynvml.NVML_ERROR_NOT_SUPPORTED  # driver without the field
    older = NvmlGpu(object(), 1)
    assert older.power_kind == POWER_USAGE and older.power_w() == pytest.approx(250.0)
