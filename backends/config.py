"""The experiment config: the whole input of one run.

One pydantic model with the common fields and one optional section per backend.
It travels to the run as canonical JSON in one environment variable, and the
SHA-256 of that JSON identifies the configuration (`config_hash`).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, Literal

from pydantic import BaseModel, Field, create_model, field_validator, model_validator

from llenergymeasure.backends.gpu_settings import GpuSettings
from llenergymeasure.backends.limits import MAX_COUNT, MAX_SECONDS, MAX_SEED, STRICT
from llenergymeasure.backends.prompts import BUILTIN_DATASETS
from llenergymeasure.backends.section import BackendSection
from llenergymeasure.backends.serving.config import ServingConfig
from llenergymeasure.backends.table import BACKENDS, TABLE, backend_row


_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")
_SHA256_RE = r"^[0-9a-f]{64}$"


class _Strict(BaseModel):
    model_config = STRICT  # strict types, finite floats, unknown keys refused (limits.py)


class MeasurementConfig(_Strict):
    """How the measured window is prepared (same protocol for every backend)."""

    warmup_batches: int = Field(1, ge=0, le=MAX_COUNT, description="Full-length batches run before the window.")
    energy_source: Literal["auto", "nvml", "zeus"] = Field(
        "auto", description="GPU energy: auto = NVML counter, else NVML power polling."
    )
    sample_interval_s: float = Field(0.1, gt=0, le=0.1, description="Background sampler period.")
    min_window_s: float = Field(
        5.0, ge=0, le=MAX_SECONDS, description="Repeat passes over the dataset until the window is this long."
    )
    max_passes: int = Field(1000, ge=1, le=MAX_COUNT, description="Upper bound on passes for min_window_s.")
    # Thermal stabilisation: after warm-up, run passes of the workload until GPU temperature
    # and power stay within tolerance over a trailing window (GPU runs; skipped on the CPU).
    stabilisation_max_s: float = Field(60.0, ge=0, le=MAX_SECONDS, description="0 disables the wait.")
    stabilisation_min_s: float = Field(0.0, ge=0, le=MAX_SECONDS)
    stabilisation_window_s: float = Field(5.0, gt=0, le=MAX_SECONDS)
    stabilisation_tolerance_c: float = Field(1.0, gt=0, le=100)
    stabilisation_tolerance_w: float = Field(10.0, gt=0, le=10_000)
    baseline_s: float = Field(
        0.0, ge=0, le=MAX_SECONDS,
        description="Idle power measured before loading the model (0 = skip); energy_net_j subtracts it.",
    )
    loaded_baseline_s: float = Field(
        0.0, ge=0, le=MAX_SECONDS,
        description="Idle power with the model loaded, after loading and before warm-up (0 = skip); recorded, "
                    "not subtracted.",
    )
    baseline_reuse_s: float = Field(
        0.0, ge=0, le=MAX_SECONDS, description="Reuse an idle baseline measured this long ago in the same study."
    )
    steady_state: bool = Field(
        True, description="Also report a steady-state window (continuous-batching backends)."
    )
    phase_split: bool = Field(
        False, description="Also measure a prefill-only window: prefill and decode energy (harness/phase_split.py)."
    )

    @model_validator(mode="after")
    def _stabilisation_bounds(self) -> MeasurementConfig:
        if self.stabilisation_min_s > self.stabilisation_max_s > 0:
            raise ValueError("stabilisation_min_s must not exceed stabilisation_max_s")
        return self


class SamplingConfig(_Strict):
    """Decoding, the same for every backend. temperature 0 = greedy."""

    temperature: float = Field(0.0, ge=0, le=100)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, le=MAX_COUNT, description="0 = no top-k filtering.")


class _Experiment(_Strict):
    """One experiment: a model, a workload, a backend and its settings (one optional
    section per backend, added from the backend table below)."""

    model: str = Field(description="Built-in name (llem/tiny-llama), local directory or HF id.")
    model_revision: str | None = Field(
        None, description="Hugging Face revision (a commit hash pins it); local models ignore it."
    )
    backend: Literal[BACKENDS] = "pytorch"  # type: ignore[valid-type]
    dataset: str = Field("synthetic", description="synthetic, aienergyscore or a JSONL path.")
    # Filled when a study is loaded (orchestrator/study/paths.py): a dataset file's content
    # is part of the configuration, so two different files at one path never share a hash.
    dataset_sha256: str | None = Field(None, pattern=_SHA256_RE, description="SHA-256 of a dataset file.")
    n_prompts: int = Field(64, ge=1, le=MAX_COUNT)
    max_input_tokens: int = Field(128, ge=1, le=MAX_COUNT, description="Prompts are truncated to this length.")
    max_output_tokens: int = Field(128, ge=1, le=MAX_COUNT)
    ignore_eos: bool = Field(
        True, description="Generate exactly max_output_tokens (comparable runs) unless false."
    )
    seed: int = Field(42, ge=0, le=MAX_SEED, description="numpy and torch take 0 to 2**32 - 1.")
    device: str = Field("auto", description="auto (CUDA if present, else CPU), cpu, cuda, cuda:N.")
    measurement: MeasurementConfig = Field(default_factory=MeasurementConfig)
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    lora_adapter: str | None = Field(
        None, description="PEFT LoRA adapter directory, applied on top of model (vLLM only)."
    )
    gpu: GpuSettings | None = Field(
        None, description="Power limit and locked clocks, set on the run's GPUs by the orchestrator (gpu_settings.py)."
    )
    scenario: Literal["offline", "serving"] = Field(
        "offline", description="offline: every request of a pass arrives at its start; serving: the backend's own "
                               "OpenAI-compatible server under the serving: load (harness/serving.py).")
    serving: ServingConfig | None = Field(None, description="The load of scenario: serving (backends/serving/config.py).")

    @field_validator("model", "dataset", "model_revision", "lora_adapter")
    @classmethod
    def _not_blank(cls, v: str | None) -> str | None:
        if v is not None and not v.strip():
            raise ValueError("must not be empty")
        if v is not None and "\x00" in v:
            raise ValueError("must not contain a NUL character")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE_RE.match(v):
            raise ValueError("must be auto, cpu, cuda or cuda:N (for example cuda:0)")
        return v

    @model_validator(mode="after")
    def _own_section_only(self) -> _Experiment:
        for name in BACKENDS:
            if name != self.backend and getattr(self, name) is not None:
                raise ValueError(
                    f"section '{name}:' is set but backend is '{self.backend}'; "
                    f"remove the section or set backend: {name}"
                )
        if self.dataset_sha256 is not None and self.dataset in BUILTIN_DATASETS:
            raise ValueError(f"dataset_sha256: is only for a dataset file, not the built-in '{self.dataset}'; remove it")
        lora_unsupported = backend_row(self.backend).lora_unsupported
        if self.lora_adapter is not None and lora_unsupported:
            raise ValueError(lora_unsupported)
        # Fill the backend's own section with its defaults, so that an omitted
        # section and an explicit one with default values hash the same.
        if getattr(self, self.backend) is None:
            setattr(self, self.backend, backend_row(self.backend).section())
        return self

    @model_validator(mode="after")
    def _gpu_levers_and_phase_split(self) -> _Experiment:
        if self.gpu is not None and self.gpu.is_empty():
            self.gpu = None  # `gpu: {}` (or all null) changes nothing: the same configuration, the same hash
        if self.gpu is not None and self.device == "cpu":
            raise ValueError("gpu: settings apply to the run's GPUs, but device is cpu; remove gpu: or use a GPU device")
        if self.measurement.phase_split and backend_row(self.backend).continuous_batching:
            raise ValueError(
                f"measurement.phase_split: not offered for backend {self.backend}: a continuous-batching engine "
                "runs one request's prefill in the same steps as others' decode, so a prefill-only window does "
                "not measure the prefill inside a full one; split prefill and decode with backend: pytorch")
        if self.measurement.phase_split and self.scenario != "offline":
            raise ValueError("measurement.phase_split: needs the offline scenario (every request of a pass "
                             "arrives at its start, so the prefill-only window replays the same batches)")
        return self

    @model_validator(mode="after")
    def _scenario(self) -> _Experiment:
        """A serving: section belongs to scenario: serving and back; and the backend's server
        must be able to apply every setting given (refused here, not ignored in a run)."""
        if self.scenario == "offline":
            if self.serving is not None:
                raise ValueError("serving: is set but scenario is offline; add scenario: serving or remove the "
                                 "serving: section")
            return self
        if self.serving is None:
            raise ValueError("scenario: serving needs a serving: section with at least request_rate and "
                             "n_requests (or duration_s), e.g. serving: {request_rate: 2, n_requests: 100}")
        row = backend_row(self.backend)
        if row.server is None:
            raise ValueError(f"scenario: serving is not offered for backend {self.backend}: {row.server_unsupported}")
        problem = row.server.problem(self)
        if problem:
            raise ValueError(problem)
        return self

    @property
    def backend_section(self) -> BackendSection:
        return getattr(self, self.backend)

    @property
    def gpus_per_run(self) -> int:
        """GPUs one run of this experiment spans when it runs on CUDA (tensor x pipeline parallel)."""
        return self.backend_section.gpus_per_run

    def canonical_json(self) -> str:
        d = self.model_dump(mode="json", exclude_none=True)
        if d.get("scenario") == "offline":
            del d["scenario"]  # the default, left out: offline configurations keep the hash they had before it
        return canonical_json(d)

    def config_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()



# One optional section per row of the backend table (`pytorch:`, `vllm:`, ...): adding a
# backend adds its section here without touching this file.
ExperimentConfig = create_model(
    "ExperimentConfig", __base__=_Experiment, __module__=__name__,
    **{row.name: (row.section | None, None) for row in TABLE},  # type: ignore[call-overload]
)
ExperimentConfig.__doc__ = _Experiment.__doc__


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal configs give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
