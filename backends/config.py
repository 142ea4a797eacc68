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

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BackendName = Literal["pytorch", "vllm", "tensorrt"]
BACKENDS: tuple[str, ...] = ("pytorch", "vllm", "tensorrt")

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MeasurementConfig(_Strict):
    """How the measured window is prepared (same protocol for every backend)."""

    warmup_batches: int = Field(1, ge=0, description="Full-length batches run before the window.")
    thermal_stabilisation_s: float = Field(
        0.0, ge=0, description="Pause after warm-up before the window opens, in seconds."
    )
    baseline_s: float = Field(
        0.0, ge=0, description="Idle energy measured before loading the model (0 = skip)."
    )


class PyTorchConfig(_Strict):
    """transformers `generate` with static batches."""

    batch_size: int = Field(1, ge=1)
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    attn_implementation: Literal["auto", "eager", "sdpa", "flash_attention_2"] = "auto"
    torch_compile: bool = False
    load_in_4bit: bool = False
    load_in_8bit: bool = False

    @model_validator(mode="after")
    def _one_quantisation(self) -> PyTorchConfig:
        if self.load_in_4bit and self.load_in_8bit:
            raise ValueError("load_in_4bit and load_in_8bit are exclusive: set at most one")
        return self


class VLLMConfig(_Strict):
    """vLLM offline engine. The adapter is not implemented yet; validated only."""

    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_num_seqs: int = Field(256, ge=1)
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1)
    enforce_eager: bool = False


class TensorRTConfig(_Strict):
    """TensorRT-LLM LLM API. The adapter is not implemented yet; validated only."""

    dtype: Literal["auto", "float16", "bfloat16"] = "auto"
    max_batch_size: int = Field(8, ge=1)


SECTION_MODELS: dict[str, type[BaseModel]] = {
    "pytorch": PyTorchConfig,
    "vllm": VLLMConfig,
    "tensorrt": TensorRTConfig,
}


class ExperimentConfig(_Strict):
    """One experiment: a model, a workload, a backend and its settings."""

    model: str = Field(description="Built-in name (llem/tiny-llama), local directory or HF id.")
    backend: BackendName = "pytorch"
    dataset: str = Field("synthetic", description="synthetic, aienergyscore or a JSONL path.")
    n_prompts: int = Field(64, ge=1)
    max_input_tokens: int = Field(128, ge=1, description="Prompts are truncated to this length.")
    max_output_tokens: int = Field(128, ge=1)
    ignore_eos: bool = Field(
        True, description="Generate exactly max_output_tokens (comparable runs) unless false."
    )
    seed: int = 42
    device: str = Field("auto", description="auto (CUDA if present, else CPU), cpu, cuda, cuda:N.")
    measurement: MeasurementConfig = Field(default_factory=MeasurementConfig)
    pytorch: PyTorchConfig | None = None
    vllm: VLLMConfig | None = None
    tensorrt: TensorRTConfig | None = None

    @field_validator("model", "dataset")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must not be empty")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not _DEVICE_RE.match(v):
            raise ValueError("must be auto, cpu, cuda or cuda:N (for example cuda:0)")
        return v

    @model_validator(mode="after")
    def _own_section_only(self) -> ExperimentConfig:
        for name in BACKENDS:
            if name != self.backend and getattr(self, name) is not None:
                raise ValueError(
                    f"section '{name}:' is set but backend is '{self.backend}'; "
                    f"remove the section or set backend: {name}"
                )
        # Fill the backend's own section with its defaults, so that an omitted
        # section and an explicit one with default values hash the same.
        if getattr(self, self.backend) is None:
            setattr(self, self.backend, SECTION_MODELS[self.backend]())
        return self

    @property
    def backend_section(self) -> BaseModel:
        return getattr(self, self.backend)

    def canonical_json(self) -> str:
        return canonical_json(self.model_dump(mode="json", exclude_none=True))

    def config_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal configs give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
