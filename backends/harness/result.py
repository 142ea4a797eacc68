"""The files a run leaves behind: `result.json` on success, `error.json` on failure.

A run counts as done only when its result.json validates against `RunResult`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, model_validator

from llenergymeasure.backends.contract import SCHEMA_VERSION
from llenergymeasure.backends.harness.metrics import Metrics


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


class EnergyReport(_Strict):
    """A secondary energy measurement (the host CPU) and what made it."""

    source: str | None
    unavailable_reason: str | None
    per_domain_j: dict[str, float]


class StabilisationReport(_Strict):
    waited_s: float
    reached: bool | None  # None: nothing to wait on (CPU run, disabled, no readings)
    detail: str


class Baseline(_Strict):
    """Idle power of the measured devices, before the model was loaded."""

    power_w: float | None
    measured_at_unix: float
    devices: list[str]  # GPU UUIDs ([] for the CPU)
    reused: bool  # taken from an earlier run of the study (measurement.baseline_reuse_s)


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
    baseline: Baseline | None
    environment: dict[str, Any]
    started_at: str
    finished_at: str

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
