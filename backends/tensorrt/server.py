"""TensorRT-LLM's OpenAI-compatible server (`trtllm-serve`), as the backend table describes
it (the serving scenario). How it is started and spoken to is serve.py, imported by the run
only; it has never run here (no GPU)."""

from __future__ import annotations

from llenergymeasure.backends.serving.spec import ServerSpec

EXECUTABLE = "trtllm-serve"

SERVER = ServerSpec(name=f"{EXECUTABLE} (TensorRT engine)", launcher="llenergymeasure.backends.tensorrt.serve")
