"""Starting `transformers serve --continuous-batching` and speaking to it (the PyTorch
backend's serving scenario).

Started as `python -m transformers.cli.transformers serve MODEL_DIR` in the run's own
environment (it needs accelerate, fastapi, uvicorn and openai beside transformers). The
`pytorch:` settings it can apply become its flags (server.py refuses `batch_size`, which it
has no counterpart for).

The server has no `ignore_eos`: each request carries a complete `generation_config` (its
JSON field), whose `eos_token_id` of -1 leaves continuous batching no stop token, so every
request generates exactly max_tokens, as offline (backends/decoding.py). It streams text
only, one event per decoded piece of text, and the usage (token totals) in its last event:
the client counts tokens from that total (backends/serving/client.py says how).
"""

from __future__ import annotations

import json
from typing import Any

from llenergymeasure.backends.devices import resolve_dtype
from llenergymeasure.backends.pytorch.server import MODULE
from llenergymeasure.backends.serving.spec import ServerLaunch, ServerLauncher, in_flight_cap

QUANTISATION = {"load_in_4bit": "bnb-4bit", "load_in_8bit": "bnb-8bit"}
NO_EOS = -1  # transformers' continuous batching: an eos_token_id below 0 stops on nothing
CB_PAGE_SIZE = 256  # tokens per cache block (ContinuousBatchingConfig.page_size, its default)


def cpu_cache_flags(config: Any) -> list[str]:
    """On the CPU, a paged KV cache and batch sized for the workload, as the vLLM adapter sizes
    vLLM's there (vllm/backend.py: cpu_kv_cache). Left to itself, continuous batching sizes
    its cache from 90% of free host memory (13.7 GiB on this machine for a 3 M-parameter
    model) and every step's attention mask from that cache: 375 ms per token instead of a
    fraction of that. Room for every request that can be in flight at its longest, in whole
    blocks, and a step of at most all their prompts at once."""
    cap = in_flight_cap(config)
    longest = config.max_input_tokens + config.max_output_tokens
    blocks = cap * -(-longest // CB_PAGE_SIZE) + 1
    return ["--cb-num-blocks", str(blocks), "--cb-max-batch-tokens", str(max(cap * (config.max_input_tokens + 1), 16))]


def command(launch: ServerLaunch) -> list[str]:
    config = launch.config
    s = config.pytorch
    argv = [launch.python, "-m", MODULE, "serve", str(launch.model_dir), "--continuous-batching",
            "--device", launch.device, "--dtype", resolve_dtype(s.dtype, launch.device),
            "--host", launch.host, "--port", str(launch.port), "--default-seed", str(config.seed),
            "--log-level", "info"]
    if launch.device == "cpu":
        argv += cpu_cache_flags(config)
    if s.attn_implementation != "auto":
        argv += ["--attn-implementation", s.attn_implementation]
    if s.torch_compile:
        argv.append("--compile")
    for name, method in QUANTISATION.items():
        if getattr(s, name):
            argv += ["--quantization", method]
    return argv


def env(launch: ServerLaunch) -> dict[str, str]:
    # the CLI checks PyPI for a newer transformers on start: never from a run
    return {"HF_HUB_OFFLINE": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "TRANSFORMERS_OFFLINE": "1"}


def request_fields(config: Any, d: Any) -> dict[str, Any]:
    """The decoding recipe (a backends/decoding.py Decoding) as a complete GenerationConfig
    (the server's `generation_config` field replaces the checkpoint's own, so nothing is
    left to its defaults)."""
    greedy = {"do_sample": False}
    sampled = {"do_sample": True, "temperature": d.temperature, "top_p": d.top_p, "top_k": d.top_k or None}
    gen = {
        "max_new_tokens": d.max_new_tokens,
        **(greedy if d.greedy else sampled),
        "repetition_penalty": d.repetition_penalty,
        "num_beams": 1,
        "eos_token_id": NO_EOS if d.ignore_eos else list(d.stop_token_ids),
    }
    return {"generation_config": json.dumps(gen, sort_keys=True)}


LAUNCHER = ServerLauncher(
    command=command,
    request_fields=request_fields,
    exact_length="generation_config with eos_token_id -1 (no stop token) and max_new_tokens = max_tokens",
    env=env,
    notes=("token counts per request from the server's final usage; text events carry no token counts",),
)
