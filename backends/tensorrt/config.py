"""The `tensorrt:` section of an experiment: TensorRT-LLM's LLM API, TensorRT engine
flow. Build settings define the engine (and its cache key); runtime settings do not."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import Field

from llenergymeasure.backends.limits import MAX_COUNT, MAX_GPUS, MAX_TOKENS
from llenergymeasure.backends.section import BackendSection

LORA_UNSUPPORTED = (
    "lora_adapter: TensorRT-LLM builds its engine from one set of weights, so a LoRA adapter "
    "must be merged first (peft: merge_and_unload, then save_pretrained) and model: must point "
    "at the merged checkpoint; backend vllm applies adapters unmerged"
)


class TensorRTConfig(BackendSection):
    """TensorRT-LLM (LLM API, TensorRT engine flow). Build settings define the
    engine (and its cache key); runtime settings do not."""

    # build settings
    dtype: Literal["auto", "float16", "bfloat16"] = "auto"
    max_batch_size: int = Field(8, ge=1, le=MAX_COUNT)
    max_num_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_input_len: int | None = Field(None, ge=1, le=MAX_TOKENS)
    max_seq_len: int | None = Field(None, ge=1, le=MAX_TOKENS)
    tensor_parallel_size: int = Field(1, ge=1, le=MAX_GPUS)
    pipeline_parallel_size: int = Field(1, ge=1, le=MAX_GPUS)
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

    @property
    def gpus_per_run(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size

    def build_settings(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in self.RUNTIME_FIELDS}
