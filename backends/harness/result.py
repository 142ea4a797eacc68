"""The files a run leaves behind: `result.json` on success, `error.json` on failure,
and beside the result `requests.parquet`, the measured window's per-request records.

A run counts as done only when its result.json validates against `RunResult`.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from llenergymeasure.backends.atomic import write_bytes_atomic
from llenergymeasure.backends.contract import SCHEMA_VERSION
from llenergymeasure.backends.harness.metrics import Metrics
from llenergymeasure.backends.harness.phase_split import PhaseSplit
from llenergymeasure.backends.harness.readback import GpuReadback
from llenergymeasure.backends.registry import RequestRecord
from llenergymeasure.backends.serving.report import ServingReport


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Resolved(_Strict):
    """What `auto` and names resolved to inside the run."""

    model_path: str
    n_parameters: int
    device: str
    dtype: str
    extra: dict[str, Any] = {}


class PhaseTimes(_Strict):
    baseline_s: float
    warmup_s: float
    stabilisation_s: float
    loaded_baseline_s: float = 0.0  # (defaulted: results from before it existed still load)


class EnergyReport(_Strict):
    """A secondary energy measurement (the host CPU) and what made it."""

    source: str | None
    unavailable_reason: str | None
    per_domain_j: dict[str, float]
    # What the figure covers. RAPL counts every socket's packages and DRAM for every
    # process on the host, not the run's alone: "host". (Defaulted so results written
    # before the field existed, all RAPL and so all host-wide, still load.)
    scope: Literal["host"] = "host"


class StabilisationReport(_Strict):
    waited_s: float
    reached: bool | None  # None: nothing to wait on (CPU run, disabled, no readings)
    detail: str


class SteadyStateReport(_Strict):
    """How the steady-state window was found (harness/steady_state.py), or why there is
    none; its figures are the metrics' steady_state_* fields."""

    configured_concurrency: int | None  # B: requests the engine runs at once (None: not reported)
    mean_concurrency: float | None  # time-weighted requests in flight over the (candidate) window
    start_s: float | None  # seconds from the window's start (the first pass's arrival)
    end_s: float | None
    # "energy_counter": the GPUs' cumulative counters read in every sample, interpolated
    # at the edges (the instrument of energy_j); "power_trapezoid": sampled power
    # integrated, where a GPU has no counter; None: no energy for the window
    energy_method: Literal["energy_counter", "power_trapezoid"] | None
    reason: str | None  # why there is no steady-state window; None when there is one


class Baseline(_Strict):
    """Idle power of the measured devices, by the run's energy source: `unloaded` before
    the model is loaded (measurement.baseline_s; energy_net_j subtracts this one), or
    `loaded` with the model resident, after loading and before warm-up
    (measurement.loaded_baseline_s; recorded beside it, never subtracted)."""

    power_w: float | None  # sum over the devices
    # GPU UUID, or RAPL zone (package-0, dram-0) on a CPU run -> W. (The defaults below
    # let results from before these fields existed load; such a baseline is never reused.)
    power_per_device_w: dict[str, float] = {}
    source: str | None = None  # the energy source that measured it, as RunResult.energy_source
    kind: Literal["unloaded", "loaded"] = "unloaded"
    measured_at_unix: float
    devices: list[str]  # GPU UUIDs ([] for the CPU)
    reused: bool  # taken from an earlier run of the study (measurement.baseline_reuse_s; unloaded only)


class RunResult(_Strict):
    schema_version: int = SCHEMA_VERSION
    status: Literal["success"] = "success"
    experiment_id: str
    config: dict[str, Any]
    resolved: Resolved
    metrics: Metrics
    energy_source: str | None
    energy_unavailable_reason: str | None
    energy_fallback_reason: str | None  # why a better source was not used (e.g. no counter: polled)
    energy_per_device_j: dict[str, float]
    cpu_energy: EnergyReport
    sampling_coverage: float | None  # timeseries samples received / expected in the window
    warnings: list[str]
    phases: PhaseTimes
    stabilisation: StabilisationReport
    # continuous-batching backends with measurement.steady_state; None otherwise (and in
    # results written before the field existed)
    steady_state: SteadyStateReport | None = None
    # the run's GPUs' power limit and clocks as the driver enforced them in the window,
    # read back through NVML (harness/readback.py); [] on the CPU and in older results
    gpu_readback: list[GpuReadback] = []
    phase_split: PhaseSplit | None = None  # measurement.phase_split (harness/phase_split.py)
    serving: ServingReport | None = None  # scenario: serving (harness/serving.py); None offline
    baseline: Baseline | None
    loaded_baseline: Baseline | None = None  # measurement.loaded_baseline_s (defaulted for older results)
    environment: dict[str, Any]
    started_at: str
    finished_at: str
    # The measured window's edges on the same clock as started_at (None in results from
    # before they were recorded): which other runs of the host overlapped it is read from them.
    window_started_at: str | None = None
    window_finished_at: str | None = None

    @model_validator(mode="after")
    def _energy_explained(self) -> RunResult:
        if self.metrics.energy_j is None and not self.energy_unavailable_reason:
            raise ValueError("energy_j is null without energy_unavailable_reason")
        if self.metrics.energy_j is not None and not self.energy_source:
            raise ValueError("energy_j is set without energy_source")
        return self


class RunError(_Strict):
    """error.json. The harness writes it when the run fails in Python; the host
    completes it (log tail, exit code) or writes it itself when the run died or was
    stopped (timeout, watchdog, interrupt, killed), keeping the harness's own error
    in `cause`."""

    schema_version: int = SCHEMA_VERSION
    status: Literal["failed"] = "failed"
    experiment_id: str | None
    error_type: str
    message: str
    traceback: str
    started_at: str | None
    finished_at: str
    kind: str | None = None  # the host's classification (orchestrator/execution/failures.py)
    exit_code: int | None = None
    cause: str | None = None  # the harness's error, when the host stopped the run
    log_tail: str | None = None  # last lines of run.log


# requests.parquet: one row per request of the measured window, enough to recompute every
# latency percentile in result.json but ITL (which needs every token's time). Times are
# seconds from the window's start (the first pass's arrival), so a reader needs no clock;
# first/last_token_s are null for a request that produced no token.
REQUEST_COLUMNS: tuple[tuple[str, str], ...] = (
    ("pass_index", "int64"),  # 0-based pass over the dataset within the window
    ("request_index", "int64"),  # 0-based position of the prompt in the dataset
    ("arrival_s", "float64"),  # when the request arrived (offline: its pass's start)
    ("submitted_s", "float64"),  # when the adapter handed it to its engine (a diagnostic)
    ("first_token_s", "float64"),
    ("last_token_s", "float64"),
    ("input_tokens", "int64"),
    ("output_tokens", "int64"),
    ("output_token_ids", "list<item: int64>"),  # the generated tokens, in order
)


def request_rows(passes: list[list[RequestRecord]], origin_s: float) -> list[dict[str, Any]]:
    """`passes`: each pass's records in prompt order; `origin_s`: the window's start on
    the records' clock."""
    def rel(t: float | None) -> float | None:
        return None if t is None else t - origin_s

    return [
        {"pass_index": p, "request_index": i, "arrival_s": rel(r.arrival_s), "submitted_s": rel(r.submitted_s),
         "first_token_s": rel(r.token_times_s[0] if r.token_times_s else None),
         "last_token_s": rel(r.token_times_s[-1] if r.token_times_s else None),
         "input_tokens": r.input_tokens, "output_tokens": r.output_tokens, "output_token_ids": r.token_ids}
        for p, records in enumerate(passes) for i, r in enumerate(records)
    ]


def write_requests(path: Path, passes: list[list[RequestRecord]], origin_s: float) -> None:
    """Write requests.parquet atomically (a reader never sees half a file), with fixed
    column types, so an all-null column still reads back as numbers."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, pa.list_(pa.int64()) if kind.startswith("list") else pa.type_for_alias(kind))
                        for name, kind in REQUEST_COLUMNS])
    table = pa.Table.from_pylist(request_rows(passes, origin_s), schema=schema)
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(path, buf.getvalue())
