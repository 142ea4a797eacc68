"""Checks a result carries about its own measurement (issue 18, items 5 and 7): RAPL
counters that could have wrapped more often than two readings tell, the GPU settings
that move J/token in the environment snapshot, and idle baselines per device (unloaded
and loaded), never reused across energy sources or devices. GPUs are FakeGpus and RAPL
a fake powercap tree (tests/support/fakes.py); no NVML or RAPL here."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from llenergymeasure.backends import contract
from llenergymeasure.backends.config import ExperimentConfig, MeasurementConfig
from llenergymeasure.backends.harness.baseline import measure_baseline, reusable_baseline
from llenergymeasure.backends.harness.energy import (
    RAPL_FALLBACK_MAX_W, RAPL_LIMIT_MARGIN, EnergyReading, NvmlCounterMeter, RaplMeter, one_more_wrap_w,
    rapl_max_power_w, select_cpu_meter,
)
from llenergymeasure.backends.harness.environment import snapshot
from llenergymeasure.backends.harness.gpu import GpuDiscovery, NvmlGpu
from llenergymeasure.backends.harness.metrics import compute_metrics
from llenergymeasure.backends.harness.result import Baseline
from llenergymeasure.backends.harness.validity import rapl_wrap_warnings
from llenergymeasure.backends.limits import MAX_SECONDS
from tests.backends.test_energy_sources import nvml_binding  # noqa: F401 - the fixture
from tests.support.fakes import FakeGpu, make_powercap_tree, set_energy_uj

# -- RAPL: one more wrap than two readings show --------------------------------------------


def test_one_more_wrap_is_ruled_out_only_above_the_zones_plausible_power():
    # 262 kJ range, 60 kJ seen over 300 s: one more wrap would mean 1073 W, beyond a 1000 W bound
    assert one_more_wrap_w(60_000_000_000, 262_143_328_850, 300.0) == pytest.approx(1073.8, abs=0.1)
    # the same draw over 600 s: 637 W, which a package can draw: two readings can't tell
    assert one_more_wrap_w(120_000_000_000, 262_143_328_850, 600.0) == pytest.approx(636.9, abs=0.1)
    assert one_more_wrap_w(0, 1, 0.0) == float("inf")


def test_a_zones_bound_is_its_highest_reported_limit_with_margin(tmp_path):
    root = make_powercap_tree(tmp_path, {"intel-rapl:0": {"name": "package-0", "energy_uj": 0},
                                         "intel-rapl:0:0": {"name": "dram", "energy_uj": 0}})
    package, dram = root / "intel-rapl:0", root / "intel-rapl:0:0"
    assert rapl_max_power_w(package, "package") == RAPL_FALLBACK_MAX_W["package"]  # no limits readable
    assert rapl_max_power_w(dram, "dram") == RAPL_FALLBACK_MAX_W["dram"]
    (package / "constraint_0_power_limit_uw").write_text("125000000\n")  # PL1 125 W
    (package / "constraint_1_power_limit_uw").write_text("200000000\n")  # PL2 200 W
    (package / "constraint_0_max_power_uw").write_text("0\n")  # "unknown": ignored
    assert rapl_max_power_w(package, "package") == pytest.approx(200.0 * RAPL_LIMIT_MARGIN)
    assert {z.key: z.max_power_w for z in RaplMeter(root).zones} == {"package-0": 300.0, "dram-0": 500.0}


def test_a_window_that_could_hide_another_wrap_is_warned(tmp_path):
    # a counter whose whole range is 10 uJ: any window longer than 12 ns could wrap again
    root = make_powercap_tree(tmp_path, {"intel-rapl:0": {"name": "package-0", "energy_uj": 9,
                                                          "max_energy_range_uj": 10}})
    meter = select_cpu_meter(root)
    meter.start()
    set_energy_uj(root, "intel-rapl:0", 1)  # one wrap seen: 2 uJ
    reading = meter.stop()
    assert reading.per_device_j == pytest.approx({"package-0": 2e-6})
    assert set(reading.rapl_wrap_doubt) == {"package-0"}
    (warned,) = rapl_wrap_warnings(reading.rapl_wrap_doubt, reading.duration_s)
    assert warned.startswith("rapl_multiple_wraps: ") and "package-0: one more wrap would mean" in warned
    assert "within its 1000 W bound" in warned


def test_a_usual_counter_range_over_a_short_window_is_not_warned(tmp_path):
    root = make_powercap_tree(tmp_path, {"intel-rapl:0": {"name": "package-0", "energy_uj": 1_000_000}})
    meter = select_cpu_meter(root)
    meter.start()
    set_energy_uj(root, "intel-rapl:0", 3_000_000)
    reading = meter.stop()  # 262 kJ more in well under a second: no package draws that
    assert reading.rapl_wrap_doubt == {} and rapl_wrap_warnings({}, reading.duration_s) == []


def test_the_test_hook_points_runs_at_a_fake_powercap_tree(tmp_path, monkeypatch):
    root = make_powercap_tree(tmp_path, {"intel-rapl:0": {"name": "package-0", "energy_uj": 5}})
    monkeypatch.setenv(contract.ENV_TEST_POWERCAP_ROOT, str(root))
    assert isinstance(select_cpu_meter(), RaplMeter)


# -- environment snapshot: the settings that move J/token ---------------------------------


def test_the_snapshot_records_each_gpus_power_limit_clocks_ecc_and_mig():
    gpus = GpuDiscovery([FakeGpu("GPU-a", power_limit_w=450.0, app_clocks_mhz=(1410.0, 1593.0), ecc=True,
                                 mig=False),
                         FakeGpu("GPU-b", index=1, power_limit_w=None, app_clocks_mhz=(None, None), ecc=None,
                                 mig=None)])
    a, b = snapshot(gpus)["gpus"]
    assert a == {"index": 0, "name": "FakeGPU", "uuid": "GPU-a", "power_limit_w": 450.0,
                 "applications_sm_clock_mhz": 1410.0, "applications_mem_clock_mhz": 1593.0,
                 "ecc_enabled": True, "mig_enabled": False}
    # a GPU that offers none of them: recorded as unknown, not as "off" and not an error
    assert [b[k] for k in ("power_limit_w", "applications_sm_clock_mhz", "applications_mem_clock_mhz",
                           "ecc_enabled", "mig_enabled")] == [None] * 5


def test_nvml_reads_the_settings_through_the_binding(nvml_binding, monkeypatch):  # noqa: F811
    import pynvml

    def not_supported(*a):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)

    clocks = {pynvml.NVML_CLOCK_SM: 1755, pynvml.NVML_CLOCK_MEM: 2619}
    for name, fn in {  # raising=True: the binding must have these names
        "nvmlDeviceGetEnforcedPowerLimit": lambda h: 700_000,  # mW
        "nvmlDeviceGetApplicationsClock": lambda h, kind: clocks[kind],
        "nvmlDeviceGetEccMode": lambda h: [pynvml.NVML_FEATURE_ENABLED, pynvml.NVML_FEATURE_DISABLED],
        "nvmlDeviceGetMigMode": lambda h: [pynvml.NVML_DEVICE_MIG_DISABLE, pynvml.NVML_DEVICE_MIG_ENABLE],
    }.items():
        monkeypatch.setattr(pynvml, name, fn)
    gpu = NvmlGpu(object(), 0)
    assert gpu.enforced_power_limit_w() == pytest.approx(700.0)
    assert gpu.applications_clocks_mhz() == (1755.0, 2619.0)
    assert gpu.ecc_enabled() is True  # the current mode, not the pending one
    assert gpu.mig_enabled() is False
    for name in ("nvmlDeviceGetEnforcedPowerLimit", "nvmlDeviceGetApplicationsClock", "nvmlDeviceGetEccMode",
                 "nvmlDeviceGetMigMode"):
        monkeypatch.setattr(pynvml, name, not_supported)
    assert (gpu.enforced_power_limit_w(), gpu.applications_clocks_mhz(), gpu.ecc_enabled(),
            gpu.mig_enabled()) == (None, (None, None), None, None)


# -- idle baselines -------------------------------------------------------------------------


def test_a_baseline_is_kept_per_device_by_the_runs_source():
    meter = NvmlCounterMeter([FakeGpu("GPU-a", 60.0), FakeGpu("GPU-b", 90.0)])
    b = measure_baseline(meter, 0.2, ["GPU-a", "GPU-b"], "unloaded")  # 0.2 s of real idling
    assert b.kind == "unloaded" and b.source == "nvml_total_energy_counter" and not b.reused
    assert b.power_per_device_w == pytest.approx({"GPU-a": 60.0, "GPU-b": 90.0}, rel=0.02)
    assert b.power_w == pytest.approx(150.0, rel=0.02)


def test_a_cpu_baseline_is_kept_per_rapl_zone(tmp_path):
    root = make_powercap_tree(tmp_path, {"intel-rapl:0": {"name": "package-0", "energy_uj": 0},
                                         "intel-rapl:0:0": {"name": "dram", "energy_uj": 0}})
    b = measure_baseline(select_cpu_meter(root), 0.01, [], "loaded")
    assert b.kind == "loaded" and b.source == "rapl" and set(b.power_per_device_w) == {"package-0", "dram-0"}


def _offered(monkeypatch, **over) -> None:
    fields = {"power_w": 150.0, "power_per_device_w": {"GPU-a": 60.0, "GPU-b": 90.0},
              "source": "nvml_total_energy_counter", "kind": "unloaded", "measured_at_unix": time.time() - 30,
              "devices": ["GPU-a", "GPU-b"], "reused": False}
    monkeypatch.setenv(contract.ENV_BASELINE, Baseline(**{**fields, **over}).model_dump_json())


def test_reuse_needs_the_same_source_and_the_same_devices(monkeypatch):
    reuse = MeasurementConfig(baseline_reuse_s=600)
    counter = "nvml_total_energy_counter"
    _offered(monkeypatch)
    got = reusable_baseline(reuse, ["GPU-b", "GPU-a"], counter)
    assert got is not None and got.reused and got.power_per_device_w == {"GPU-a": 60.0, "GPU-b": 90.0}
    assert reusable_baseline(reuse, ["GPU-a", "GPU-b"], "nvml_power_polling") is None  # another source
    assert reusable_baseline(reuse, ["GPU-a", "GPU-b"], "zeus") is None
    assert reusable_baseline(reuse, ["GPU-a", "GPU-b"], None) is None  # nothing measures this run
    assert reusable_baseline(reuse, ["GPU-a"], counter) is None  # another device set
    assert reusable_baseline(reuse, ["GPU-a", "GPU-c"], counter) is None
    _offered(monkeypatch, power_per_device_w={"GPU-a": 150.0})  # a total without every GPU's value
    assert reusable_baseline(reuse, ["GPU-a", "GPU-b"], counter) is None
    _offered(monkeypatch, source=None)  # from before sources were recorded
    assert reusable_baseline(reuse, ["GPU-a", "GPU-b"], counter) is None
    _offered(monkeypatch, kind="loaded")  # one configuration's: never reused
    assert reusable_baseline(reuse, ["GPU-a", "GPU-b"], counter) is None


def test_energy_net_subtracts_the_unloaded_baseline_and_records_the_loaded_one():
    m = compute_metrics([], EnergyReading(duration_s=10.0, energy_j=3000.0), model_load_s=0.0,
                        peak_memory_mb=None, n_parameters=1, baseline_power_w=60.0,
                        loaded_baseline_power_w=95.0)
    assert m.baseline_power_w == 60.0 and m.loaded_baseline_power_w == 95.0
    assert m.energy_net_j == pytest.approx(3000.0 - 60.0 * 10.0)  # never 3000 - 95 x 10
    only_loaded = compute_metrics([], EnergyReading(duration_s=10.0, energy_j=3000.0), model_load_s=0.0,
                                  peak_memory_mb=None, n_parameters=1, baseline_power_w=None,
                                  loaded_baseline_power_w=95.0)
    assert only_loaded.energy_net_j is None and only_loaded.loaded_baseline_power_w == 95.0


def test_the_loaded_baseline_setting_is_strict_and_bounded():
    assert MeasurementConfig().loaded_baseline_s == 0.0  # off unless asked for
    assert MeasurementConfig(loaded_baseline_s=5).loaded_baseline_s == 5.0
    for bad in (-1.0, MAX_SECONDS + 1):
        with pytest.raises(ValidationError, match="loaded_baseline_s"):
            MeasurementConfig(loaded_baseline_s=bad)
    with pytest.raises(ValidationError, match="loaded_baseline"):
        ExperimentConfig(model="m", measurement={"loaded_baseline": "yes"})  # unknown key refused


def test_a_study_offers_each_energy_source_setting_its_own_latest_baseline():
    """orchestrator/execution/baselines.py: a baseline measured under energy_source zeus
    is not the one offered to the next auto run (which would refuse it anyway)."""
    from llenergymeasure.orchestrator.execution.baselines import BaselineCache
    from llenergymeasure.orchestrator.execution.outcome import RunOutcome
    from tests.support.recorded_study import template_result

    def outcome(source_setting: str, power_w: float) -> RunOutcome:
        b = Baseline(power_w=power_w, source="x", measured_at_unix=time.time(), devices=[], reused=False)
        config = {"model": "m", "measurement": {"energy_source": source_setting}}
        return RunOutcome("done", 0, result=template_result().model_copy(update={"baseline": b, "config": config}))

    cache = BaselineCache()
    cache.remember(outcome("auto", 61.0))
    cache.remember(outcome("zeus", 75.0))
    auto = ExperimentConfig(model="m", measurement={"baseline_reuse_s": 600})
    zeus = ExperimentConfig(model="m", measurement={"baseline_reuse_s": 600, "energy_source": "zeus"})
    assert Baseline.model_validate_json(cache.env_for(auto)[contract.ENV_BASELINE]).power_w == 61.0
    assert Baseline.model_validate_json(cache.env_for(zeus)[contract.ENV_BASELINE]).power_w == 75.0
    assert cache.env_for(ExperimentConfig(model="m")) == {}  # reuse off
