"""The measurement protocol, identical for every backend:

environment snapshot -> unloaded idle baseline (measured, or reused within a study) ->
load model (timed) -> load and tokenise prompts -> loaded idle baseline (optional;
harness/baseline.py) -> warm-up at full length ->
thermal stabilisation under load (passes until temperature and power plateau) ->
measured window, opened at once: passes over the dataset until it lasts
measurement.min_window_s, device-synchronised at both edges (stamped at energy-
counter updates where the counter measures) -> metrics, per-request records (requests.parquet) and
validity warnings. Every request's latencies count from its arrival, which this module
stamps (run_pass), never an adapter.
"""

from __future__ import annotations

import logging
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
    HostCpuMeter, NvmlCounterMeter, NvmlPollingMeter, measured, select_cpu_meter, select_meter,
)
from llenergymeasure.backends.harness.baseline import measure_baseline, unloaded_baseline_phase
from llenergymeasure.backends.harness.environment import snapshot
from llenergymeasure.backends.harness import faults
from llenergymeasure.backends.harness.gpu import GpuDiscovery, cuda_uuids, discover_nvml, visible_cuda_uuids
from llenergymeasure.backends.harness.heartbeat import beat
from llenergymeasure.backends.harness.metrics import compute_metrics
from llenergymeasure.backends.harness.phase_split import measure_phase_split
from llenergymeasure.backends.harness.readback import GpuReadback, mismatch_warnings, read_back
from llenergymeasure.backends.harness.result import (
    EnergyReport, PhaseTimes, Resolved, RunResult, StabilisationReport, SteadyStateReport, write_requests,
)
from llenergymeasure.backends.harness.sampler import Sampler
from llenergymeasure.backends.harness.stabilise import Stabilisation, stabilise_under_load
from llenergymeasure.backends.harness.steady_state import NoSteadyState, SteadyState, steady_state_window
from llenergymeasure.backends.harness.validity import (
    counter_warnings, energy_warnings, gap_warnings, gpu_allocation_warnings, gpu_window_warnings, host_contention_warnings,
    rapl_wrap_warnings, warning, window_warnings,
)
from llenergymeasure.backends.prompts import load_prompts
from llenergymeasure.backends.registry import Backend, LoadedModel, RequestRecord, create_backend
from llenergymeasure.backends.table import backend_row

log = logging.getLogger("llem.harness")



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


def configured_concurrency(config: ExperimentConfig, loaded: LoadedModel) -> int | None:
    """B, the requests a continuous-batching engine runs at once, as the adapter resolved
    it (vLLM's max_num_seqs in LoadedModel.extra: its default depends on the GPU), else as
    the backend section sets it (vllm.max_num_seqs, tensorrt.max_batch_size, which the
    engine was built with). None where neither says."""
    for source in (loaded.extra, config.backend_section.model_dump()):
        for key in ("max_num_seqs", "max_batch_size"):
            value = source.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return value
    return None


def measure_steady_state(records: list[RequestRecord], concurrency: int | None, sampler: Sampler,
                         origin_s: float) -> tuple[SteadyState | None, float | None, SteadyStateReport]:
    """The first pass's steady-state window (steady_state.py), its GPU energy from the
    sampler (the counter in every sample, else sampled power), and the report of how, or
    why there is none. origin_s: the measured window's start (report times count from it)."""
    found = (steady_state_window(records, concurrency) if concurrency is not None
             else NoSteadyState("the backend did not report how many requests it runs at once"))
    if isinstance(found, NoSteadyState):
        return None, None, SteadyStateReport(configured_concurrency=concurrency,
                                             mean_concurrency=found.mean_concurrency, start_s=None, end_s=None,
                                             energy_method=None, reason=found.reason)
    energy, method = sampler.energy_j("window", found.start_s, found.end_s)
    return found, energy, SteadyStateReport(
        configured_concurrency=concurrency, mean_concurrency=found.mean_concurrency, start_s=found.start_s - origin_s,
        end_s=found.end_s - origin_s, energy_method=method, reason=None)


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


def instrument_warnings(*, config: ExperimentConfig, device: str, meter: Any, reading: Any, cpu_meter: Any,
                        cpu_reading: Any, sampler: Sampler, metrics: Any, other_cpu_s: float | None,
                        allocated: list[str], uuids: list[str], gpus: GpuDiscovery) -> tuple[list[str], list[GpuReadback]]:
    """The checks on the instruments themselves, one list for both scenarios (offline and
    serving measure with the same meters, so a figure is doubted for the same reasons in
    each): GPU window rows, GPUs measured vs allocated, energy sign, counter edges, sampling
    gaps, host contention, the gpu: settings as read back, RAPL wraps. Also returns the
    read-back itself, which every result records."""
    m = config.measurement
    requested_cap = config.gpu.power_limit_w if config.gpu else None
    out = gpu_window_warnings(sampler.phase_rows("window"), requested_power_limit_w=requested_cap)
    if device.startswith("cuda"):
        measured_uuids = list(reading.per_device_j) if reading.per_device_j else uuids
        out += gpu_allocation_warnings(config.gpus_per_run, allocated, measured_uuids)
    out += energy_warnings(metrics.energy_j, metrics.energy_net_j)
    if isinstance(meter, NvmlCounterMeter):
        out += counter_warnings(duration_s=reading.duration_s, period_s=reading.counter_period_s,
                                unaligned=reading.counter_unaligned, stuck=reading.counter_stuck,
                                edge_poll_s=meter.edge_poll_s)
    gaps = {"sampler": (sampler.longest_gap_s("window"), m.sample_interval_s)}
    if isinstance(meter, NvmlPollingMeter):  # energy itself was integrated over samples
        gaps["power polling"] = (reading.longest_gap_s, meter.interval_s)
    out += gap_warnings(gaps)
    out += host_contention_warnings(other_cpu_s, reading.duration_s)
    readback = read_back(gpus.devices, sampler.phase_rows("window"))  # gpu: settings as enforced
    out += mismatch_warnings(config.gpu, readback)
    rapl = cpu_reading if cpu_meter else reading if device == "cpu" else None
    out += rapl_wrap_warnings(rapl.rapl_wrap_doubt, rapl.duration_s) if rapl else []
    return out, readback


def run_experiment(config: ExperimentConfig, run_dir: Path) -> RunResult:
    if config.scenario == "serving":  # harness/serving.py runs it (dispatched by harness/entrypoint.py)
        raise ValueError("scenario: serving runs through harness.serving.run_serving, not the offline protocol")
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
        baseline, baseline_s = unloaded_baseline_phase(sampler, meter, m, uuids)

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

        loaded_baseline, t = None, time.perf_counter()
        if m.loaded_baseline_s > 0:  # the model resident, nothing run yet
            sampler.phase = "loaded_baseline"
            beat("loaded_baseline")
            loaded_baseline = measure_baseline(meter, m.loaded_baseline_s, uuids, "loaded")
        loaded_baseline_s = time.perf_counter() - t

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
            def stabilising_pass() -> None:
                run_pass(backend, prepared)
                beat("stabilise")

            stab = stabilise_under_load(stabilising_pass, lambda: sampler.plateau_series("stabilise"), m)
            log.info("stabilisation: %s", stab.detail)
        else:
            stab = Stabilisation(0.0, None, "CPU run: no GPU temperature or power to wait on")

        # No idle gap: the window opens as the stabilising passes end (a counter meter's
        # start edge waits at most one counter update, ~100 ms, before it).
        backend.synchronize()
        sampler.mark("window")
        beat("window")
        log.info("measured window: %d prompts, at least %g s", len(prompts), m.min_window_s)
        if cpu_meter:
            cpu_meter.start()
        if host_cpu:
            host_cpu.start()
        window_started_at = utc_now()
        with measured(meter) as window:
            passes = _window(backend, prepared, m)
        window_finished_at = utc_now()
        other_cpu_s = host_cpu.stop() if host_cpu else None
        cpu_reading = cpu_meter.stop() if cpu_meter else None
        sampler.mark("window")  # closing edge sample
        split = (measure_phase_split(backend, prepared, m, meter, [p.records for p in passes], window[0], sampler)
                 if m.phase_split else None)  # measurement.phase_split: a prefill-only window beside it
        sampler.phase = "done"

    reading = window[0]
    records = [r for p in passes for r in p.records]
    if device == "cpu":
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        cpu_energy = reading.energy_j
    else:
        peak_mb = sampler.peak_gpu_memory_mb("window")
        cpu_energy = cpu_reading.energy_j if cpu_reading else None

    steady = steady_energy = steady_report = None
    if m.steady_state and backend_row(config.backend).continuous_batching:
        steady, steady_energy, steady_report = measure_steady_state(
            passes[0].records, configured_concurrency(config, loaded), sampler, passes[0].arrival_s)

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
        loaded_baseline_power_w=loaded_baseline.power_w if loaded_baseline else None,
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
    )
    checks, readback = instrument_warnings(config=config, device=device, meter=meter, reading=reading,
                                           cpu_meter=cpu_meter, cpu_reading=cpu_reading, sampler=sampler,
                                           metrics=metrics, other_cpu_s=other_cpu_s, allocated=allocated,
                                           uuids=uuids, gpus=gpus)
    warnings += checks
    warnings += [warning(w.code, w.detail) for w in backend.run_warnings()]  # e.g. a cache not reset

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
        phases=PhaseTimes(baseline_s=baseline_s, warmup_s=warmup_s, stabilisation_s=stab.waited_s,
                          loaded_baseline_s=loaded_baseline_s),
        stabilisation=StabilisationReport(waited_s=stab.waited_s, reached=stab.reached, detail=stab.detail),
        steady_state=steady_report,
        gpu_readback=readback,
        phase_split=split,
        baseline=baseline,
        loaded_baseline=loaded_baseline,
        environment=environment,
        started_at=started_at,
        finished_at=utc_now(),
        window_started_at=window_started_at,
        window_finished_at=window_finished_at,
    )
