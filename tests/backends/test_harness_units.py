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


def test_latency_definitions_count_from_arrival():
    # one pass, two static batches: both requests arrive at 0; the second was submitted at
    # 0.25, when the first batch finished, and its wait counts in its TTFT
    recs = [
        RequestRecord(input_tokens=10, submitted_s=0.0, token_times_s=[0.1, 0.15, 0.25], arrival_s=0.0),
        RequestRecord(input_tokens=6, submitted_s=0.25, token_times_s=[0.3, 0.32], arrival_s=0.0),
    ]
    m = compute_metrics(recs, EnergyReading(duration_s=2.0, energy_j=50.0), model_load_s=1.0,
                        peak_memory_mb=10.0, n_parameters=1000, baseline_power_w=5.0)
    assert m.n_requests == 2 and m.input_tokens == 16 and m.output_tokens == 5
    assert m.output_tokens_per_s == pytest.approx(2.5)
    assert m.requests_per_s == pytest.approx(1.0)
    # TTFT: 100 ms and 300 ms (from submission it would be 100 and 50); ITL pooled: 50, 100, 20 ms
    assert m.ttft_ms_p50 == pytest.approx(200.0)
    assert m.itl_ms_p50 == pytest.approx(50.0)
    assert m.itl_ms_p99 == pytest.approx(99.0, rel=0.01)
    # TPOT: (250 - 100) / 2 = 75 ms and (320 - 300) / 1 = 20 ms; E2E: 250 and 320 ms
    assert m.tpot_ms_p50 == pytest.approx(47.5)
    assert m.tpot_ms_p90 == pytest.approx(69.5)
    assert m.e2e_ms_p50 == pytest.approx(285.0)
    assert m.e2e_ms_p99 == pytest.approx(319.3)
    assert m.energy_per_output_token_j == pytest.approx(10.0)
    assert m.avg_power_w == pytest.approx(25.0)
    assert m.energy_net_j == pytest.approx(40.0)
    assert m.flops_estimate == 2 * 1000 * 21


def test_a_record_without_arrival_is_refused_not_timed_from_submission():
    rec = RequestRecord(input_tokens=1, submitted_s=0.0, token_times_s=[0.1])
    with pytest.raises(ValueError, match="arrival_s"):
        compute_metrics([rec], EnergyReading(duration_s=1.0), model_load_s=0, peak_memory_mb=0,
                        n_parameters=1, baseline_power_w=None)


def test_no_energy_means_no_derived_energy():
    recs = [RequestRecord(input_tokens=1, submitted_s=0.0, token_times_s=[0.1], arrival_s=0.0)]
    m = compute_metrics(recs, EnergyReading(duration_s=1.0), model_load_s=0, peak_memory_mb=0,
                        n_parameters=1, baseline_power_w=None)
    assert m.energy_j is None and m.energy_per_output_token_j is None and m.avg_power_w is None
    assert m.itl_ms_p50 is None  # one token: no inter-token gap exists
    assert m.tpot_ms_p50 is None  # nor a decode step (not a TPOT of 0)
    assert m.ttft_ms_p50 == pytest.approx(100.0) and m.e2e_ms_p50 == pytest.approx(100.0)


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
            "metrics": compute_metrics([RequestRecord(1, 0.0, [0.1], 0.0)], EnergyReading(1.0), model_load_s=0,
                                       peak_memory_mb=0, n_parameters=1, baseline_power_w=None).model_dump(),
            "energy_source": None, "energy_unavailable_reason": None, "energy_fallback_reason": None,
            "energy_per_device_j": {},
            "cpu_energy": {"source": None, "unavailable_reason": "no RAPL", "per_domain_j": {}},
            "sampling_coverage": None, "warnings": [],
            "phases": {"baseline_s": 0, "warmup_s": 0, "stabilisation_s": 0},
            "stabilisation": {"waited_s": 0, "reached": None, "detail": "CPU run"}, "baseline": None,
            "environment": {}, "started_at": "t", "finished_at": "t",
        })
