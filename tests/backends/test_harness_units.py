"""Harness logic that doesn't need a model: metric definitions and energy meters.

GPUs are absent here, so NVML is replaced by FakeGpu, a fake of the one
hardware seam (backends.harness.gpu.GpuDevice)."""

from __future__ import annotations

import pytest

from llenergymeasure.backends.harness import energy
from llenergymeasure.backends.harness.energy import (
    EnergyReading, NvmlCounterMeter, UnavailableMeter, measured, select_meter,
)
from llenergymeasure.backends.harness.gpu import GpuDiscovery
from llenergymeasure.backends.harness.metrics import compute_metrics
from llenergymeasure.backends.registry import RequestRecord
from tests.support.fakes import FakeGpu


def test_ttft_and_itl_definitions():
    recs = [
        RequestRecord(input_tokens=10, submitted_s=0.0, token_times_s=[0.1, 0.15, 0.25]),
        RequestRecord(input_tokens=6, submitted_s=0.0, token_times_s=[0.3, 0.32]),
    ]
    m = compute_metrics(recs, EnergyReading(duration_s=2.0, energy_j=50.0), model_load_s=1.0,
                        peak_memory_mb=10.0, n_parameters=1000, baseline_power_w=5.0)
    assert m.n_requests == 2 and m.input_tokens == 16 and m.output_tokens == 5
    assert m.output_tokens_per_s == pytest.approx(2.5)
    assert m.requests_per_s == pytest.approx(1.0)
    # TTFT: 100 ms and 300 ms; ITL pooled: 50, 100, 20 ms
    assert m.ttft_ms_p50 == pytest.approx(200.0)
    assert m.itl_ms_p50 == pytest.approx(50.0)
    assert m.itl_ms_p99 == pytest.approx(99.0, rel=0.01)
    assert m.energy_per_output_token_j == pytest.approx(10.0)
    assert m.avg_power_w == pytest.approx(25.0)
    assert m.energy_net_j == pytest.approx(40.0)
    assert m.flops_estimate == 2 * 1000 * 21


def test_no_energy_means_no_derived_energy():
    recs = [RequestRecord(input_tokens=1, submitted_s=0.0, token_times_s=[0.1])]
    m = compute_metrics(recs, EnergyReading(duration_s=1.0), model_load_s=0, peak_memory_mb=0,
                        n_parameters=1, baseline_power_w=None)
    assert m.energy_j is None and m.energy_per_output_token_j is None and m.avg_power_w is None
    assert m.itl_ms_p50 is None  # one token: no inter-token gap exists


def test_nvml_counter_meter_reports_per_gpu_and_total():
    import time

    gpus = [FakeGpu("GPU-a", 100.0), FakeGpu("GPU-b", 300.0)]
    meter = select_meter("cuda:0", GpuDiscovery(gpus))
    assert isinstance(meter, NvmlCounterMeter) and meter.source == "nvml_total_energy_counter"
    with measured(meter) as out:
        time.sleep(0.3)
    r = out[0]
    assert r.per_device_j["GPU-b"] == pytest.approx(3 * r.per_device_j["GPU-a"], rel=0.1)
    assert r.energy_j == pytest.approx(sum(r.per_device_j.values()))
    assert r.energy_j == pytest.approx(400.0 * r.duration_s, rel=0.1)


def test_unsupported_counter_without_power_is_explained_not_estimated():
    gpu = FakeGpu("GPU-a", 100.0, counter=False, power=lambda t: None)  # no power reading either
    meter = select_meter("cuda:0", GpuDiscovery([gpu]))
    assert isinstance(meter, UnavailableMeter) and "not supported" in meter.unavailable_reason
    assert "power is not readable on GPU-a" in meter.unavailable_reason
    meter.start()
    assert meter.stop().energy_j is None


def test_cpu_and_missing_nvml_reasons(tmp_path, monkeypatch):
    monkeypatch.setattr(energy, "POWERCAP_ROOT", tmp_path / "no-powercap")
    cpu = select_meter("cpu", GpuDiscovery([]))
    assert cpu.source is None and "CPU energy (RAPL) cannot be read" in cpu.unavailable_reason
    m = select_meter("cuda:0", GpuDiscovery([], unavailable_reason="NVML is not available (x)"))
    assert m.source is None and m.unavailable_reason.startswith("NVML is not available")


def test_result_schema_refuses_unexplained_missing_energy():
    from pydantic import ValidationError

    from llenergymeasure.backends.harness.result import RunResult

    with pytest.raises(ValidationError, match="without energy_unavailable_reason"):
        RunResult.model_validate({
            "experiment_id": "x", "config": {}, "resolved": {"model_path": "m", "n_parameters": 1,
            "device": "cpu", "dtype": "float32"},
            "metrics": compute_metrics([RequestRecord(1, 0.0, [0.1])], EnergyReading(1.0), model_load_s=0,
                                       peak_memory_mb=0, n_parameters=1, baseline_power_w=None).model_dump(),
            "energy_source": None, "energy_unavailable_reason": None, "energy_fallback_reason": None,
            "energy_per_device_j": {},
            "cpu_energy": {"source": None, "unavailable_reason": "no RAPL", "per_domain_j": {}},
            "sampling_coverage": None, "warnings": [],
            "phases": {"baseline_s": 0, "warmup_s": 0, "stabilisation_s": 0},
            "stabilisation": {"waited_s": 0, "reached": None, "detail": "CPU run"}, "baseline": None,
            "environment": {}, "started_at": "t", "finished_at": "t",
        })
