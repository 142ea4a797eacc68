"""The serving scenario's run: the backend's own OpenAI-compatible server under a seeded load,
measured with the offline protocol's instruments (harness/protocol.py's meter, sampler,
baselines, steady state and warnings).

environment snapshot -> unloaded idle baseline -> prompts (tokenised and truncated as
offline) and the arrival schedule (schedule.json) -> start the server (its own process
group, output in server.log) and wait until /v1/models answers: model_load_s ->
warm-up requests (in no figure) -> the server's prefix cache emptied where it can be ->
stabilisation under load (GPU) -> measured window = the load, from the first scheduled
arrival to the last completion -> metrics (harness/metrics.py, plus backends/serving/
metrics.py), requests.parquet, warnings (saturation among them).

A server that does not become ready, exits, or answers a request with an error fails the
run (ServerFailed, in error.json with the server's last log lines); the server's process
group is killed however the run ends.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llenergymeasure.backends import contract
from llenergymeasure.backends.atomic import write_bytes_atomic
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.decoding import Decoding, decoding_for
from llenergymeasure.backends.devices import resolve_dtype, run_device
from llenergymeasure.backends.harness.baseline import unloaded_baseline_phase
from llenergymeasure.backends.harness.energy import HostCpuMeter, measured, select_cpu_meter, select_meter
from llenergymeasure.backends.harness.environment import snapshot
from llenergymeasure.backends.harness.heartbeat import beat
from llenergymeasure.backends.harness.metrics import compute_metrics
from llenergymeasure.backends.harness.protocol import instrument_warnings, measure_steady_state, run_gpus
from llenergymeasure.backends.harness.result import (
    REQUEST_COLUMNS, EnergyReport, PhaseTimes, Resolved, RunResult, StabilisationReport, request_rows,
)
from llenergymeasure.backends.harness.sampler import Sampler
from llenergymeasure.backends.harness.stabilise import Stabilisation, stabilise_under_load
from llenergymeasure.backends.harness.validity import warning, window_warnings
from llenergymeasure.backends.models import count_parameters, resolve_model
from llenergymeasure.backends.prompts import load_prompts
from llenergymeasure.backends.registry import RequestRecord
from llenergymeasure.backends.serving.client import (
    LoadFailed, Outcome, PlannedRequest, Target, completion_body, http_call, run_load,
)
from llenergymeasure.backends.serving.metrics import apportioned_energy_j, meets_slo, serving_fields
from llenergymeasure.backends.serving.process import ServerProcess
from llenergymeasure.backends.serving.report import ServingReport
from llenergymeasure.backends.serving.schedule import SCHEDULE_FILE, Schedule, build_schedule, write_schedule
from llenergymeasure.backends.serving.spec import (
    COMPLETIONS_PATH, READY_PATH, ServerLaunch, ServerLauncher, launcher,
)
from llenergymeasure.backends.table import backend_row

log = logging.getLogger("llem.serving")

HOST = "127.0.0.1"  # loopback: the container keeps network_mode none
SERVER_LOG = "server.log"
MEMORY_POLL_S = 0.2
RESET_DONE = "emptied after warm-up"


def free_port(host: str = HOST) -> int:
    """A port nothing listens on now (the server binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass
class Workload:
    """Everything the load needs, made before the server starts (outside every window)."""

    schedule: Schedule
    decoding: Decoding
    load: list[PlannedRequest]
    warmup: list[PlannedRequest]


def truncated_prompts(config: ExperimentConfig, model_dir: Path) -> tuple[list[str], list[int], int | None]:
    """The dataset's prompts cut to their first max_input_tokens tokens, as text (what a
    server takes), with their token counts and the tokenizer's EOS id. The server
    tokenises the text again; the count it reports (usage.prompt_tokens) is the one recorded."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    prompts = load_prompts(config.dataset, config.n_prompts, config.max_input_tokens, config.seed,
                           config.dataset_sha256)
    ids = [list(tok.encode(p, add_special_tokens=True))[: config.max_input_tokens] for p in prompts]
    return [tok.decode(x, skip_special_tokens=True) for x in ids], [len(x) for x in ids], tok.eos_token_id


def build_workload(config: ExperimentConfig, serve: ServerLauncher, model_dir: Path, model_name: str) -> Workload:
    texts, counts, eos = truncated_prompts(config, model_dir)
    decoding = decoding_for(config, model_dir, eos)
    schedule = build_schedule(config.serving, config.seed, len(texts))
    extra = serve.request_fields(config, decoding)

    def planned(index: int, arrival: float, prompt: int) -> PlannedRequest:
        body = completion_body(model_name, texts[prompt], config.max_output_tokens, decoding.temperature,
                               decoding.top_p, extra)
        return PlannedRequest(index, arrival, body, counts[prompt])

    load = [planned(i, a, p) for i, (a, p) in enumerate(zip(schedule.arrivals_s, schedule.prompt_indices))]
    warmup = [planned(j, 0.0, p) for j, p in enumerate(schedule.warmup_prompt_indices)]
    return Workload(schedule, decoding, load, warmup)


class TreeMemory:
    """Peak resident memory of the server's whole process tree (its workers included),
    sampled in a thread: on a CPU run, the deployment's memory is the server's, not the
    harness's."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_mb = pid, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="llem-server-memory", daemon=True)

    def _sample(self) -> None:
        import psutil

        try:
            root = psutil.Process(self.pid)
            procs = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        total = 0
        for p in procs:
            try:
                total += p.memory_info().rss
            except psutil.Error:
                continue
        self.peak_mb = max(self.peak_mb, total / 2**20)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(MEMORY_POLL_S)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample()


def _drive(server: ServerProcess, target: Target, planned: list[PlannedRequest], cap: int | None,
           timeout_s: float, what: str) -> tuple[float, list[Outcome]]:
    """run_load, with a failure reported as the server's (its exit code and log lines)."""
    try:
        return run_load(target, planned, cap, timeout_s, progress=beat)
    except LoadFailed as e:
        code = server.exited()
        died = f"; the server exited with code {code}" if code is not None else ""
        raise server.failure(f"{what} failed: {e}{died}") from None


def _reset_cache(serve: ServerLauncher, server: ServerProcess) -> str | None:
    path = serve.cache_reset_path
    if path is None:
        return None
    try:
        status, _ = http_call(server.host, server.port, "POST", path, timeout_s=30.0)
    except OSError as e:
        return f"POST {path} failed ({e}): the load may reuse KV blocks warm-up computed"
    if status != 200:
        return f"POST {path} answered HTTP {status}: the load may reuse KV blocks warm-up computed"
    return f"POST {path}: {RESET_DONE}"


def configured_concurrency(config: ExperimentConfig) -> int:
    """B for the steady-state window: the client's cap, else the server's own (vllm.max_num_seqs,
    tensorrt.max_batch_size) where set, else every request of the load."""
    s = config.serving
    if s.max_concurrency is not None:
        return s.max_concurrency
    section = config.backend_section.model_dump()
    for key in ("max_num_seqs", "max_batch_size"):
        if isinstance(section.get(key), int):
            return section[key]
    return s.n_requests or 1


def write_serving_requests(path: Path, records: list[RequestRecord], origin_s: float, schedule: Schedule,
                           methods: list[str], surplus: list[int], waited: list[bool], slo_met: list[bool] | None,
                           energy: list[float | None]) -> None:
    """requests.parquet of a serving run: the offline columns (pass_index 0, request_index =
    position in the schedule; arrival_s = scheduled arrival, submitted_s = sent), then the
    serving ones. output_token_ids only where the server streamed every request's ids:
    an empty list would read as "generated nothing" to the output-agreement check."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    with_ids = all(len(r.token_ids) == r.output_tokens for r in records)
    rows = request_rows([records], origin_s)
    extra = {"prompt_index": ("int64", schedule.prompt_indices), "token_count_method": ("string", methods),
             "tokens_without_chunk": ("int64", surplus), "waited_for_slot": ("bool", waited),
             "slo_met": ("bool", slo_met if slo_met is not None else [None] * len(records)),
             "energy_j_token_apportioned": ("float64", energy)}
    columns = [(n, k) for n, k in REQUEST_COLUMNS if with_ids or n != "output_token_ids"]
    schema = pa.schema([(n, pa.list_(pa.int64()) if k.startswith("list") else pa.type_for_alias(k)) for n, k in columns]
                       + [(n, pa.type_for_alias(k)) for n, (k, _) in extra.items()])
    for i, row in enumerate(rows):
        row.update({n: values[i] for n, (_, values) in extra.items()})
        if not with_ids:
            row.pop("output_token_ids")
    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), buf)
    write_bytes_atomic(path, buf.getvalue())


def run_serving(config: ExperimentConfig, run_dir: Path) -> RunResult:
    started_at = utc_now()
    s, m = config.serving, config.measurement
    server_spec = backend_row(config.backend).server
    if s is None or server_spec is None:  # the config refuses both; a guard for direct callers
        raise ValueError("scenario: serving needs a serving: section and a backend with a server")
    serve = launcher(server_spec)

    device = run_device(config.device)
    allocated, gpus = run_gpus(device, config.gpus_per_run)
    environment = snapshot(gpus)
    meter = select_meter(device, gpus, m.energy_source)
    cpu_meter = None if device == "cpu" else select_cpu_meter()
    host_cpu = HostCpuMeter() if device == "cpu" else None  # the server is in the run's process tree
    uuids = [g.uuid for g in gpus.devices]

    model_dir = resolve_model(config.model, config.model_revision)
    engine_dir = os.environ.get(contract.ENV_TRT_ENGINE_DIR)
    launch = ServerLaunch(config, model_dir, HOST, free_port(), device, sys.executable,
                          Path(engine_dir) if engine_dir else None)
    model_name = serve.served_model(launch)
    workload = build_workload(config, serve, model_dir, model_name)
    write_schedule(workload.schedule, run_dir)
    argv = serve.command(launch)
    target = Target(HOST, launch.port, COMPLETIONS_PATH)
    cap = s.max_concurrency

    with Sampler(gpus.devices, m.sample_interval_s) as sampler, \
            ServerProcess(argv, serve.env(launch), run_dir / SERVER_LOG, HOST, launch.port) as server:
        baseline, baseline_s = unloaded_baseline_phase(sampler, meter, m, uuids)

        sampler.phase = "load"
        beat("load")
        server.start()
        model_load_s = server.wait_ready(s.server_start_timeout_s, READY_PATH)
        log.info("server ready after %.1f s", model_load_s)

        sampler.phase = "warmup"
        beat("warmup")
        t = time.perf_counter()
        if workload.warmup:
            _drive(server, target, workload.warmup, cap, s.request_timeout_s, "warm-up")
        cache_reset = _reset_cache(serve, server)
        warmup_s = time.perf_counter() - t

        sampler.phase = "stabilise"
        beat("stabilise")
        if gpus.devices:
            burst = workload.warmup or workload.load[: cap or len(workload.load)]

            def stabilising_burst() -> None:
                _drive(server, target, burst, cap, s.request_timeout_s, "stabilisation")
                beat("stabilise")

            stab = stabilise_under_load(stabilising_burst, lambda: sampler.plateau_series("stabilise"), m)
        else:
            stab = Stabilisation(0.0, None, "CPU run: no GPU temperature or power to wait on")

        server.check_alive("before the load")
        sampler.mark("window")
        beat("window")
        log.info("load: %d requests at %s requests/s (burstiness %g, max_concurrency %s)",
                 len(workload.load), s.request_rate, s.burstiness, cap)
        if cpu_meter:
            cpu_meter.start()
        if host_cpu:
            host_cpu.start()
        window_started_at = utc_now()
        with TreeMemory(server.proc.pid) as memory, measured(meter) as window:
            origin, outcomes = _drive(server, target, workload.load, cap, s.request_timeout_s, "the load")
        window_finished_at = utc_now()
        other_cpu_s = host_cpu.stop() if host_cpu else None
        cpu_reading = cpu_meter.stop() if cpu_meter else None
        sampler.mark("window")
        sampler.phase = "done"

    reading = window[0]
    converted = [o.to_record() for o in outcomes]
    records = [r for r, _, _ in converted]
    methods = [m_ for _, m_, _ in converted]
    surplus = [n for _, _, n in converted]
    waited = [o.waited_for_slot for o in outcomes]
    if device == "cpu":
        peak_mb: float | None = memory.peak_mb
        cpu_energy = reading.energy_j
    else:
        peak_mb = sampler.peak_gpu_memory_mb("window")
        cpu_energy = cpu_reading.energy_j if cpu_reading else None

    steady = steady_energy = steady_report = None
    if m.steady_state:
        steady, steady_energy, steady_report = measure_steady_state(
            records, configured_concurrency(config), sampler, origin)

    n_params, how = count_parameters(model_dir)
    metrics = compute_metrics(
        records, reading, model_load_s=model_load_s, peak_memory_mb=peak_mb, n_parameters=n_params,
        baseline_power_w=baseline.power_w if baseline else None, n_passes=1, cpu_energy_j=cpu_energy,
        steady=steady, steady_energy_j=steady_energy,
    )
    fields, sat = serving_fields(records, s, reading.duration_s, waited)
    metrics = metrics.model_copy(update=fields)

    coverage = sampler.coverage("window", reading.duration_s)
    sampler.write(run_dir / contract.TIMESERIES_FILE)
    energy_shares = apportioned_energy_j(records, metrics.energy_j)
    slo_met = [meets_slo(r, s.slo) for r in records] if s.slo else None
    write_serving_requests(run_dir / contract.REQUESTS_FILE, records, origin, workload.schedule, methods, surplus,
                           waited, slo_met, energy_shares)

    persistence = {g.uuid: g.persistence_mode() for g in gpus.devices}
    warnings = _window_warnings(config, reading, records, coverage, stab, persistence)
    checks, readback = instrument_warnings(config=config, device=device, meter=meter, reading=reading,
                                           cpu_meter=cpu_meter, cpu_reading=cpu_reading, sampler=sampler,
                                           metrics=metrics, other_cpu_s=other_cpu_s, allocated=allocated,
                                           uuids=uuids, gpus=gpus)
    warnings += checks
    if sat.saturated:
        warnings.append(warning("saturated", sat.detail))
    if cache_reset is not None and not cache_reset.endswith(RESET_DONE):
        warnings.append(warning("prefix_cache_not_reset", cache_reset))

    cpu_source = cpu_meter if cpu_meter else meter
    return RunResult(
        experiment_id=config.config_hash(),
        config=config.model_dump(mode="json", exclude_none=True),
        resolved=Resolved(model_path=str(model_dir), n_parameters=n_params, device=device,
                          dtype=resolve_dtype(getattr(config.backend_section, "dtype", "auto"), device),
                          extra={"server": server_spec.name, "n_parameters_source": how,
                                 "decoding": workload.decoding.record()}),
        metrics=metrics,
        energy_source=meter.source,
        energy_unavailable_reason=meter.unavailable_reason,
        energy_fallback_reason=meter.fallback_reason,
        energy_per_device_j=reading.per_device_j,
        cpu_energy=EnergyReport(source=cpu_source.source, unavailable_reason=cpu_source.unavailable_reason,
                                per_domain_j=(cpu_reading.per_device_j if cpu_reading else reading.per_device_j),
                                scope="host"),
        sampling_coverage=coverage,
        warnings=warnings,
        phases=PhaseTimes(baseline_s=baseline_s, warmup_s=warmup_s, stabilisation_s=stab.waited_s),
        stabilisation=StabilisationReport(waited_s=stab.waited_s, reached=stab.reached, detail=stab.detail),
        steady_state=steady_report,
        gpu_readback=readback,
        serving=ServingReport(
            server=server_spec.name, server_command=argv, server_log=SERVER_LOG, server_ready_s=model_load_s,
            exact_length=serve.exact_length if config.ignore_eos else "ignore_eos is false: requests stop at EOS",
            schedule_file=SCHEDULE_FILE, schedule_sha256=workload.schedule.sha256, n_requests=len(records),
            warmup_requests=len(workload.warmup), max_concurrency=cap, requests_waited_for_slot=sum(waited),
            token_counting=dict(Counter(methods)), tokens_without_chunk=sum(surplus),
            slo=s.slo.targets() if s.slo else None, saturation=sat.detail, cache_reset=cache_reset,
            notes=list(serve.notes)),
        baseline=baseline,
        environment=environment,
        started_at=started_at,
        finished_at=utc_now(),
        window_started_at=window_started_at,
        window_finished_at=window_finished_at,
    )


def _window_warnings(config: ExperimentConfig, reading: Any, records: list[RequestRecord], coverage: float | None,
                     stab: Stabilisation, persistence: dict[str, bool | None]) -> list[str]:
    """The offline window's checks that apply to a load (min_window_s does not: the load's
    length is serving.n_requests or duration_s); the instruments' own checks are shared
    with the offline scenario (protocol.instrument_warnings)."""
    short = sum(1 for r in records if r.output_tokens != config.max_output_tokens) if config.ignore_eos else 0
    coverages = [c for c in (coverage, reading.coverage) if c is not None]
    return window_warnings(
        duration_s=reading.duration_s, min_window_s=0.0, passes=1,
        coverage=min(coverages) if coverages else None, persistence=persistence, stabilised=stab.reached,
        stabilisation_detail=stab.detail, short_requests=short, max_output_tokens=config.max_output_tokens,
    )
