"""The `vllm:` section of an experiment: vLLM's offline engine (EngineArgs names;
None = vLLM's own default)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llenergymeasure.backends.limits import MAX_COUNT, MAX_GPUS, MAX_TOKENS
from llenergymeasure.backends.section import BackendSection

VLLM_KV_CACHE_DTYPES = ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2")
VLLM_QUANTIZATION = ("awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "compressed-tensors",
                     "modelopt", "modelopt_fp4", "mxfp4", "torchao")


class VLLMConfig(BackendSection):
    """vLLM offline engine (EngineArgs names; None = vLLM's own default)."""

    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_num_seqs: int | None = Field(None, ge=1, le=MAX_COUNT)
    max_num_batched_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    enable_prefix_caching: bool | None = None
    enable_chunked_prefill: bool | None = None
    kv_cache_dtype: Literal[VLLM_KV_CACHE_DTYPES] = "auto"  # type: ignore[valid-type]
    quantization: Literal[VLLM_QUANTIZATION] | None = None  # type: ignore[valid-type]
    tensor_parallel_size: int = Field(1, ge=1, le=MAX_GPUS)
    pipeline_parallel_size: int = Field(1, ge=1, le=MAX_GPUS)
    enforce_eager: bool = False
    max_model_len: int | None = Field(None, ge=1, le=MAX_TOKENS)

    @property
    def gpus_per_run(self) -> int:
        return self.tensor_parallel_size * self.pipeline_parallel_size
