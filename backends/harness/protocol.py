"""The measurement protocol, identical for every backend:

environment snapshot -> idle baseline (optional) -> load model (timed) ->
load and tokenise prompts -> warm-up at full length -> stabilisation pause ->
measured window over the dataset (device-synchronised at both edges) -> metrics.
"""

from __future__ import annotations

import logging
import resource
import time
from datetime import datetime, timezone
from pathlib import Path

from backends import contract
from backends.config import ExperimentConfig
from backends.devices import run_device
from backends.harness.energy import measured, select_meter
from backends.harness.environment import snapshot
from backends.harness.gpu import GpuDiscovery, cuda_uuids, discover_nvml
from backends.harness.metrics import compute_metrics
from backends.harness.result import PhaseTimes, Resolved, RunResult
from backends.harness.sampler import Sampler
from backends.prompts import load_prompts
from backends.registry import create_backend

log = logging.getLogger("llem.harness")

# NVML's energy counter updates every few tens of ms; shorter windows are noisy.
MIN_RELIABLE_WINDOW_S = 5.0
MIN_SAMPLING_COVERAGE = 0.9


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def run_experiment(config: ExperimentConfig, run_dir: Path) -> RunResult:
    started_at = utc_now()
    warnings: list[str] = []
    backend = create_backend(config)

    device = run_device(config.device)
    gpus = (
        discover_nvml(cuda_uuids(device))
        if device.startswith("cuda")
        else GpuDiscovery([], unavailable_reason="device is cpu")
    )
    environment = snapshot(gpus)
    meter = select_meter(device, gpus)
    m = config.measurement

    with Sampler(gpus.devices) as sampler:
        baseline_power_w = None
        t = time.perf_counter()
        if m.baseline_s > 0:
            sampler.phase = "baseline"
            log.info("measuring idle baseline for %.1f s", m.baseline_s)
            with measured(meter) as base:
                time.sleep(m.baseline_s)
            if base[0].energy_j is not None:
                baseline_power_w = base[0].energy_j / base[0].duration_s
        baseline_s = time.perf_counter() - t

        sampler.phase = "load"
        log.info("loading %s on %s", config.model, device)
        t = time.perf_counter()
        loaded = backend.load()
        backend.synchronize()
        model_load_s = time.perf_counter() - t

        sampler.phase = "prepare"
        prompts = load_prompts(config.dataset, config.n_prompts, config.max_input_tokens, config.seed)
        prepared = backend.prepare(prompts)

        sampler.phase = "warmup"
        log.info("warm-up: %d batch(es) at full length", m.warmup_batches)
        t = time.perf_counter()
        if m.warmup_batches:
            backend.generate(prepared, max_batches=m.warmup_batches)
        backend.synchronize()
        warmup_s = time.perf_counter() - t

        sampler.phase = "stabilise"
        t = time.perf_counter()
        time.sleep(m.thermal_stabilisation_s)
        stabilisation_s = time.perf_counter() - t

        backend.synchronize()
        sampler.mark("window")
        log.info("measured window: %d prompts", len(prompts))
        with measured(meter) as window:
            records = backend.generate(prepared)
            backend.synchronize()
        sampler.mark("window")  # closing edge sample
        sampler.phase = "done"

    if device == "cpu":
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    else:
        peak_mb = sampler.peak_gpu_memory_mb("window")

    reading = window[0]
    metrics = compute_metrics(
        records,
        reading,
        model_load_s=model_load_s,
        peak_memory_mb=peak_mb,
        n_parameters=loaded.n_parameters,
        baseline_power_w=baseline_power_w,
    )
    coverage = sampler.coverage("window", reading.duration_s)
    sampler.write(run_dir / contract.TIMESERIES_FILE)

    if meter.source and reading.duration_s < MIN_RELIABLE_WINDOW_S:
        warnings.append(
            f"window_short: the measured window lasted {reading.duration_s:.2f} s, under the "
            f"{MIN_RELIABLE_WINDOW_S:.0f} s the energy counter needs; raise n_prompts"
        )
    if coverage is not None and coverage < MIN_SAMPLING_COVERAGE:
        warnings.append(f"low_sampling_coverage: {coverage:.0%} of expected samples arrived")
    if config.ignore_eos:
        short = [r for r in records if r.output_tokens != config.max_output_tokens]
        if short:
            warnings.append(
                f"output_length: {len(short)} request(s) did not produce exactly "
                f"{config.max_output_tokens} tokens"
            )

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
        energy_per_device_j=reading.per_device_j,
        sampling_coverage=coverage,
        warnings=warnings,
        phases=PhaseTimes(baseline_s=baseline_s, warmup_s=warmup_s, stabilisation_s=stabilisation_s),
        environment=environment,
        started_at=started_at,
        finished_at=utc_now(),
    )
