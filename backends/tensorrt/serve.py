"""Starting TensorRT-LLM's `trtllm-serve` and speaking to it (the serving scenario).

Written against trtllm-serve's documented command line (TensorRT-LLM 1.2: `trtllm-serve
MODEL --tokenizer --host --port --backend tensorrt --max_batch_size --max_num_tokens
--max_seq_len --tp_size --pp_size --kv_cache_free_gpu_memory_fraction`) and its
vLLM-derived completion request (`ignore_eos`, `min_tokens`, `top_k`, `stream_options`).
It has never run here (no GPU): the serving scenario's TensorRT-LLM path is untested.

MODEL is the prebuilt engine the orchestrator passes (contract.ENV_TRT_ENGINE_DIR), so
the server measures the same engine as an offline run; the checkpoint is its tokenizer.
"""

from __future__ import annotations

from typing import Any

from llenergymeasure.backends.serving.spec import ServerLaunch, ServerLauncher
from llenergymeasure.backends.tensorrt.server import EXECUTABLE


def _engine(launch: ServerLaunch) -> str:
    if launch.engine_dir is None:
        raise RuntimeError("trtllm-serve needs the prebuilt TensorRT engine, and the run was given none "
                           "(LLEM_TRT_ENGINE_DIR); run it through a runner that builds engines")
    return str(launch.engine_dir)


def command(launch: ServerLaunch) -> list[str]:
    s = launch.config.tensorrt
    argv = [EXECUTABLE, _engine(launch), "--tokenizer", str(launch.model_dir), "--backend", "tensorrt",
            "--host", launch.host, "--port", str(launch.port),
            "--max_batch_size", str(s.max_batch_size), "--tp_size", str(s.tensor_parallel_size),
            "--pp_size", str(s.pipeline_parallel_size),
            "--kv_cache_free_gpu_memory_fraction", str(s.kv_cache_free_gpu_memory_fraction)]
    for name in ("max_num_tokens", "max_seq_len"):
        if getattr(s, name) is not None:
            argv += [f"--{name}", str(getattr(s, name))]
    return argv


def request_fields(config: Any, d: Any) -> dict[str, Any]:
    return {"ignore_eos": d.ignore_eos, "min_tokens": d.min_new_tokens, "top_k": d.top_k,
            "stop_token_ids": list(d.stop_token_ids),
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}


LAUNCHER = ServerLauncher(
    command=command,
    request_fields=request_fields,
    exact_length="ignore_eos and min_tokens = max_tokens in every request",
    served_model=_engine,
    notes=("trtllm-serve is described from its documentation and has not run on this machine",),
)
