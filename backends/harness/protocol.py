"""The measurement protocol, identical for every backend:

environment snapshot -> idle baseline (measured, or reused within a study) ->
load model (timed) -> load and tokenise prompts -> warm-up at full length ->
thermal stabilisation (plateau of temperature and power) -> measured window:
passes over the dataset until it lasts measurement.min_window_s, device-
synchronised at both edges -> metrics, per-request records (requests.parquet) and
validity warnings. Every request's latencies count from its arrival, which this module
stamps (run_pass), never an adapter.
"""

from __future__ import annotations

import logging
import os
import resource
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llenergymeasure.backends.clock import utc_now
from llenergymeasure.backends import contract
from llenergymeasure.backends.config import ExperimentConfig, MeasurementConfig
from llenergymeasure.backends.devices import run_device
from llenergymeasure.backends.harness.energy import (
    EnergyMeter, HostCpuMeter, NvmlPollingMeter, integrate_trapezoid, measured, select_cpu_meter, select_meter,
)
from llenergymeasure.backends.harness.environment import snapshot
from llenergymeasure.backends.harness import faults
from llenergymeasure.backends.harness.gpu import GpuDiscovery, cuda_uuids, discover_nvml, visible_cuda_uuids
from llenergymeasure.backends.harness.heartbeat import beat
from llenergymeasure.backends.harness.metrics import compute_metrics
from llenergymeasure.backends.harness.result import (
    Baseline, EnergyReport, PhaseTimes, Resolved, RunResult, StabilisationReport, write_requests,
)
from llenergymeasure.backends.harness.sampler import Sampler
from llenergymeasure.backends.harness.stabilise import Stabilisation, wait_for_plateau
from llenergymeasure.backends.harness.steady_state import steady_state_window
from llenergymeasure.backends.harness.validity import (
    energy_warnings, gap_warnings, gpu_allocation_warnings, gpu_window_warnings, host_contention_warnings,
    window_warnings,
)
from llenergymeasure.backends.prompts import load_prompts
from llenergymeasure.backends.registry import Backend, RequestRecord, create_backend
from llenergymeasure.backends.table import backend_row

log = logging.getLogger("llem.harness")



def reusable_baseline(m: MeasurementConfig, gpu_uuids: list[str]) -> Baseline | None:
    """An idle baseline the runner passed from an earlier run of this study, if it
    was measured on the same devices recently enough (measurement.baseline_reuse_s)."""
    raw = os.environ.get(contract.ENV_BASELINE)
    if not raw or m.baseline_reuse_s <= 0:
        return None
    try:
        b = Baseline.model_validate_json(raw)
    except ValueError:
        return None
    fresh = time.time() - b.measured_at_unix <= m.baseline_reuse_s
    if not fresh or sorted(b.devices) != sorted(gpu_uuids) or b.power_w is None:
        return None
    return b.model_copy(update={"reused": True})


def run_gpus(device: str, n: int, visible=visible_cuda_uuids,
             discover=discover_nvml) -> tuple[list[str], GpuDiscovery]:
    """The GPUs a run was given (its device and the n - 1 visible after it, by UUID)
    and those of them NVML opened. Every measurement (energy, baseline, sampler,
    plateau, warnings) reads the opened ones; a difference between the two lists
    is warned about (validity.gpu_allocation_warnings), never silently measured."""
    if not device.startswith("cuda"):
        return [], GpuDiscovery([], unavailable_reason="device is cpu")
    allocated = cuda_uuids(device, n, visible)
    return allocated, discover(allocated)


def _measure_baseline(meter: EnergyMeter, seconds: float, devices: list[str]) -> Baseline:
    log.info("measuring idle baseline for %.1f s", seconds)
    with measured(meter) as base:
        time.sleep(seconds)
    r = base[0]
    power = r.energy_j / r.duration_s if r.energy_j is not None else None
    return Baseline(power_w=power, measured_at_unix=time.time(), devices=devices, reused=False)


def _read_plateau(gpus: GpuDiscovery):
    def read() -> tuple[float | None, float | None]:
        temps = [t for t in (g.temperature_c() for g in gpus.devices) if t is not None]
        powers = [p for p in (g.power_w() for g in gpus.devices) if p is not None]
        return (max(temps) if temps else None, sum(powers) if powers else None)

    return read


@dataclass
class Pass:
    """One `generate` call: when its requests arrived, and their records in prompt order."""

    arrival_s: float
    records: list[RequestRecord]


def run_pass(backend: Backend, prepared: Any, max_batches: int | None = None) -> Pass:
    """Call `backend.generate` and stamp every returned request's arrival. Offline
    scenario: all of a call's requests arrive together, when the call starts, so the time
    a request waits for an earlier static batch (PyTorch) or an engine slot (vLLM,
    TensorRT-LLM) counts in its latencies alike on every backend."""
    arrival = time.perf_counter()
    records = backend.generate(prepared, max_batches=max_batches)
    for r in records:
        r.arrival_s = arrival
    return Pass(arrival, records)


def _window(backend: Backend, prepared: Any, m: MeasurementConfig) -> list[Pass]:
    """Passes over the dataset until the window lasts min_window_s (or max_passes); the
    window starts with the first pass's arrival."""
    passes: list[Pass] = []
    while True:
        passes.append(run_pass(backend, prepared))
        beat("window")
        if time.perf_counter() - passes[0].arrival_s >= m.min_window_s or len(passes) >= m.max_passes:
            break
    backend.synchronize()
    return passes


def run_experiment(config: ExperimentConfig, run_dir: Path) -> RunResult:
    started_at = utc_now()
    backend = create_backend(config)
    m = config.measurement

    device = run_device(config.device)
    allocated, gpus = run_gpus(device, config.gpus_per_run)
    environment = snapshot(gpus)
    # One source owns each measurement: the inference devices' energy, and (on GPU
    # runs) the host CPU's beside it.
    meter = select_meter(device, gpus, m.energy_source)
    cpu_meter = None if device == "cpu" else select_cpu_meter()
    # RAPL is host-wide: on a CPU run, other processes' CPU work is in energy_j.
    host_cpu = HostCpuMeter() if device == "cpu" else None
    uuids = [g.uuid for g in gpus.devices]
    persistence = {g.uuid: g.persistence_mode() for g in gpus.devices}

    with Sampler(gpus.devices, m.sample_interval_s) as sampler:
        t = time.perf_counter()
        baseline = reusable_baseline(m, uuids)
        if baseline is None and m.baseline_s > 0:
            sampler.phase = "baseline"
            beat("baseline")
            baseline = _measure_baseline(meter, m.baseline_s, uuids)
        baseline_s = time.perf_counter() - t

        sampler.phase = "load"
        beat("load")
        log.info("loading %s on %s", config.model, device)
        t = time.perf_counter()
        loaded = backend.load()
        backend.synchronize()
        model_load_s = time.perf_counter() - t
        faults.inject("load")  # TEST HOOK: a no-op unless LLEM_TEST_FAULT is set

        sampler.phase = "prepare"
        beat("prepare")
        prompts = load_prompts(config.dataset, config.n_prompts, config.max_input_tokens, config.seed,
                               config.dataset_sha256)
        prepared = backend.prepare(prompts)

        sampler.phase = "warmup"
        beat("warmup")
        log.info("warm-up: %d batch(es) at full length", m.warmup_batches)
        t = time.perf_counter()
        if m.warmup_batches:
            run_pass(backend, prepared, max_batches=m.warmup_batches)
        backend.synchronize()
        warmup_s = time.perf_counter() - t

        sampler.phase = "stabilise"
        beat("stabilise")
        if gpus.devices:
            stab = wait_for_plateau(_read_plateau(gpus), m)
            log.info("stabilisation: %s", stab.detail)
        else:
            stab = Stabilisation(0.0, None, "CPU run: no GPU temperature or power to wait on")

        backend.synchronize()
        sampler.mark("window")
        beat("window")
        log.info("measured window: %d prompts, at least %g s", len(prompts), m.min_window_s)
        if cpu_meter:
            cpu_meter.start()
        if host_cpu:
            host_cpu.start()
        with measured(meter) as window:
            passes = _window(backend, prepared, m)
        other_cpu_s = host_cpu.stop() if host_cpu else None
        cpu_reading = cpu_meter.stop() if cpu_meter else None
        sampler.mark("window")  # closing edge sample
        sampler.phase = "done"

    reading = window[0]
    records = [r for p in passes for r in p.records]
    if device == "cpu":
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        cpu_energy = reading.energy_j
    else:
        peak_mb = sampler.peak_gpu_memory_mb("window")
        cpu_energy = cpu_reading.energy_j if cpu_reading else None

    steady = steady_energy = None
    if m.steady_state and backend_row(config.backend).continuous_batching:
        steady = steady_state_window(passes[0].records)
        if steady:
            steady_energy = integrate_trapezoid(sampler.power_series("window"), steady.start_s, steady.end_s)

    metrics = compute_metrics(
        records,
        reading,
        model_load_s=model_load_s,
        peak_memory_mb=peak_mb,
        n_parameters=loaded.n_parameters,
        baseline_power_w=baseline.power_w if baseline else None,
        n_passes=len(passes),
        cpu_energy_j=cpu_energy,
        steady=steady,
        steady_energy_j=steady_energy,
    )
    coverage = sampler.coverage("window", reading.duration_s)
    sampler.write(run_dir / contract.TIMESERIES_FILE)
    write_requests(run_dir / contract.REQUESTS_FILE, [p.records for p in passes], passes[0].arrival_s)

    short = sum(1 for r in records if r.output_tokens != config.max_output_tokens) if config.ignore_eos else 0
    coverages = [c for c in (coverage, reading.coverage) if c is not None]  # sampler, power polling
    warnings = window_warnings(
        duration_s=reading.duration_s, min_window_s=m.min_window_s, passes=len(passes),
        coverage=min(coverages) if coverages else None, persistence=persistence, stabilised=stab.reached,
        stabilisation_detail=stab.detail, short_requests=short,
        max_output_tokens=config.max_output_tokens,
    ) + gpu_window_warnings(sampler.phase_rows("window"))
    if device.startswith("cuda"):
        measured_uuids = list(reading.per_device_j) if reading.per_device_j else uuids
        warnings += gpu_allocation_warnings(config.gpus_per_run, allocated, measured_uuids)
    warnings += energy_warnings(metrics.energy_j, metrics.energy_net_j)
    gaps = {"sampler": (sampler.longest_gap_s("window"), m.sample_interval_s)}
    if isinstance(meter, NvmlPollingMeter):  # energy itself was integrated over samples
        gaps["power polling"] = (reading.longest_gap_s, meter.interval_s)
    warnings += gap_warnings(gaps)
    warnings += host_contention_warnings(other_cpu_s, reading.duration_s)

    cpu_source = cpu_meter if cpu_meter else meter
    return RunResult(
        experiment_id=config.config_hash(),
        config=config.model_dump(mode="json", exclude_none=True),
        resolved=Resolved(
            model_path=loaded.model_path,
            n_parameters=loaded.n_parameters,
            device=loaded.device,
            dtype=loaded.dtype,
            extra=loaded.extra,
        ),
        metrics=metrics,
        energy_source=meter.source,
        energy_unavailable_reason=meter.unavailable_reason,
        energy_fallback_reason=meter.fallback_reason,
        energy_per_device_j=reading.per_device_j,
        cpu_energy=EnergyReport(
            source=cpu_source.source,
            unavailable_reason=cpu_source.unavailable_reason,
            per_domain_j=(cpu_reading.per_device_j if cpu_reading else reading.per_device_j),
            scope="host",
        ),
        sampling_coverage=coverage,
        warnings=warnings,
        phases=PhaseTimes(baseline_s=baseline_s, warmup_s=warmup_s, stabilisation_s=stab.waited_s),
        stabilisation=StabilisationReport(waited_s=stab.waited_s, reached=stab.reached, detail=stab.detail),
        baseline=baseline,
        environment=environment,
        started_at=started_at,
        finished_at=utc_now(),
    )
