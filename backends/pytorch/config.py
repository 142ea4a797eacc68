"""The `pytorch:` section of an experiment: transformers `generate` with static batches."""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import Field, model_validator

from llenergymeasure.backends.limits import MAX_COUNT
from llenergymeasure.backends.section import BackendSection

LORA_UNSUPPORTED = (
    "lora_adapter: the pytorch backend does not apply LoRA adapters (vllm does); merge the "
    "adapter into the base weights (peft: merge_and_unload, then save_pretrained) and point "
    "model: at the merged directory, or use backend: vllm"
)


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class PyTorchConfig(BackendSection):
    """transformers `generate` with static batches."""

    batch_size: int = Field(1, ge=1, le=MAX_COUNT)
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

    def device_problem(self, device: str) -> str | None:
        """bitsandbytes and flash-attention need a CUDA GPU and their package."""
        for flag in ("load_in_4bit", "load_in_8bit"):
            if getattr(self, flag):
                if device == "cpu":
                    return (f"pytorch.{flag}: bitsandbytes quantisation needs a CUDA GPU and this run "
                            "is on the CPU; remove it or run on a GPU machine")
                if not _installed("bitsandbytes"):
                    return f"pytorch.{flag}: needs the bitsandbytes package; pip install bitsandbytes"
        if self.attn_implementation == "flash_attention_2":
            if device == "cpu":
                return "pytorch.attn_implementation: flash_attention_2 needs a CUDA GPU; use sdpa or eager on the CPU"
            if not _installed("flash_attn"):
                return "pytorch.attn_implementation: flash_attention_2 needs the flash-attn package"
        return None
