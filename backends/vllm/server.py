"""vLLM's OpenAI-compatible server, as the backend table describes it (the serving scenario).
How it is started and spoken to is serve.py, imported by the run only."""

from __future__ import annotations

from typing import Any

from llenergymeasure.backends.serving.spec import ServerSpec

MODULE = "vllm.entrypoints.openai.api_server"


def problem(config: Any) -> str | None:
    if config.lora_adapter is not None:
        return ("lora_adapter: the serving scenario does not load LoRA adapters into vLLM's server yet; "
                "use scenario: offline, or merge the adapter and point model: at the merged directory")
    return None


SERVER = ServerSpec(name=f"vLLM OpenAI API server (python -m {MODULE})",
                    launcher="llenergymeasure.backends.vllm.serve", problem=problem)
