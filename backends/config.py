"""The experiment config: the whole input of one run.

One pydantic model with the common fields and one optional section per backend.
It travels to the run as canonical JSON in one environment variable, and the
SHA-256 of that JSON identifies the configuration (`config_hash`).
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

BackendName = Literal["pytorch", "vllm", "tensorrt"]
BACKENDS: tuple[str, ...] = ("pytorch", "vllm", "tensorrt")

_DEVICE_RE = re.compile(r"^(auto|cpu|cuda|cuda:\d+)$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MeasurementConfig(_Strict):
    """How the measured window is prepared (same protocol for every backend)."""

    warmup_batches: int = Field(1, ge=0, description="Full-length batches run before the window.")
    energy_source: Literal["auto", "nvml", "zeus"] = Field(
        "auto", description="GPU energy: auto = NVML counter, else NVML power polling."
    )
    sample_interval_s: float = Field(0.1, gt=0, le=0.1, description="Background sampler period.")
    min_window_s: float = Field(
        5.0, ge=0, description="Repeat passes over the dataset until the window is this long."
    )
    max_passes: int = Field(1000, ge=1, description="Upper bound on passes for min_window_s.")
    # Thermal stabilisation: after warm-up, wait until GPU temperature and power
    # stay within tolerance over a trailing window (GPU runs; skipped on the CPU).
    stabilisation_max_s: float = Field(60.0, ge=0, description="0 disables the wait.")
    stabilisation_min_s: float = Field(0.0, ge=0)
    stabilisation_window_s: float = Field(5.0, gt=0)
    stabilisation_tolerance_c: float = Field(1.0, gt=0)
    stabilisation_tolerance_w: float = Field(10.0, gt=0)
    baseline_s: float = Field(
        0.0, ge=0, description="Idle power measured before loading the model (0 = skip)."
    )
    baseline_reuse_s: float = Field(
        0.0, ge=0, description="Reuse an idle baseline measured this long ago in the same study."
    )
    steady_state: bool = Field(
        True, description="Also report a steady-state window (continuous-batching backends)."
    )

    @model_validator(mode="after")
    def _stabilisation_bounds(self) -> MeasurementConfig:
        if self.stabilisation_min_s > self.stabilisation_max_s > 0:
            raise ValueError("stabilisation_min_s must not exceed stabilisation_max_s")
        return self


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


class SamplingConfig(_Strict):
    """Decoding, the same for every backend. temperature 0 = greedy."""

    temperature: float = Field(0.0, ge=0)
    top_p: float = Field(1.0, gt=0, le=1)
    top_k: int = Field(0, ge=0, description="0 = no top-k filtering.")


VLLM_KV_CACHE_DTYPES = ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2")
VLLM_QUANTIZATION = ("awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "compressed-tensors",
                     "modelopt", "modelopt_fp4", "mxfp4", "torchao")


class VLLMConfig(_Strict):
    """vLLM offline engine (EngineArgs names; None = vLLM's own default)."""

    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_num_seqs: int | None = Field(None, ge=1)
    max_num_batched_tokens: int | None = Field(None, ge=1)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    kv_cache_dtype: Literal[VLLM_KV_CACHE_DTYPES] = "auto"  # type: ignore[valid-type]
    quantization: Literal[VLLM_QUANTIZATION] | None = None  # type: ignore[valid-type]
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    enforce_eager: bool = False
    max_model_len: int | None = Field(None, ge=1)


class TensorRTConfig(_Strict):
    """TensorRT-LLM (LLM API, TensorRT engine flow). Build settings define the
    engine (and its cache key); runtime settings do not."""

    # build settings
    dtype: Literal["auto", "float16", "bfloat16"] = "auto"
    max_batch_size: int = Field(8, ge=1)
    max_num_tokens: int | None = Field(None, ge=1)
    max_input_len: int | None = Field(None, ge=1)
    max_seq_len: int | None = Field(None, ge=1)
    tensor_parallel_size: int = Field(1, ge=1)
    pipeline_parallel_size: int = Field(1, ge=1)
    quantization: Literal["none", "fp8", "int8_weight_only", "int8_smoothquant",
                          "w4a16_awq", "w4a16_gptq"] = "none"
    kv_cache_quantization: Literal["none", "fp8", "int8"] = "none"
    # (no builder optimisation level: TensorRT-LLM 1.2.1's BuildConfig has none to set)
    # runtime settings; block reuse is off by default so that warm-up prompts
    # don't hand the measured window a prefilled KV cache
    kv_cache_enable_block_reuse: bool = False
    kv_cache_free_gpu_memory_fraction: float = Field(0.9, gt=0, le=1)

    RUNTIME_FIELDS: ClassVar[tuple[str, ...]] = (
        "kv_cache_enable_block_reuse", "kv_cache_free_gpu_memory_fraction",
    )

    def build_settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.RUNTIME_FIELDS}


LORA_UNSUPPORTED = {
    "pytorch": (
        "lora_adapter: the pytorch backend does not apply LoRA adapters (vllm does); merge the "
        "adapter into the base weights (peft: merge_and_unload, then save_pretrained) and point "
        "model: at the merged directory, or use backend: vllm"
    ),
    "tensorrt": (
        "lora_adapter: TensorRT-LLM builds its engine from one set of weights, so a LoRA adapter "
        "must be merged first (peft: merge_and_unload, then save_pretrained) and model: must point "
        "at the merged checkpoint; backend vllm applies adapters unmerged"
    ),
}

SECTION_MODELS: dict[str, type[BaseModel]] = {
    "pytorch": PyTorchConfig,
    "vllm": VLLMConfig,
    "tensorrt": TensorRTConfig,
}


class ExperimentConfig(_Strict):
    """One experiment: a model, a workload, a backend and its settings."""

    model: str = Field(description="Built-in name (llem/tiny-llama), local directory or HF id.")
    model_revision: str | None = Field(
        None, description="Hugging Face revision (a commit hash pins it); local models ignore it."
    )
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
    sampling: SamplingConfig = Field(default_factory=SamplingConfig)
    lora_adapter: str | None = Field(
        None, description="PEFT LoRA adapter directory, applied on top of model (vLLM only)."
    )
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
        if self.lora_adapter is not None and self.backend != "vllm":
            raise ValueError(LORA_UNSUPPORTED[self.backend])
        # Fill the backend's own section with its defaults, so that an omitted
        # section and an explicit one with default values hash the same.
        if getattr(self, self.backend) is None:
            setattr(self, self.backend, SECTION_MODELS[self.backend]())
        return self

    @property
    def backend_section(self) -> BaseModel:
        return getattr(self, self.backend)

    @property
    def gpus_per_run(self) -> int:
        """GPUs one run of this experiment spans when it runs on CUDA (tensor x pipeline parallel)."""
        s = self.backend_section
        return getattr(s, "tensor_parallel_size", 1) * getattr(s, "pipeline_parallel_size", 1)

    def canonical_json(self) -> str:
        return canonical_json(self.model_dump(mode="json", exclude_none=True))

    def config_hash(self) -> str:
        return hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()


def canonical_json(obj: Any) -> str:
    """Key-sorted, whitespace-free JSON: equal configs give equal bytes."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
