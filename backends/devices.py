"""Resolving `device` and `dtype` settings against what this process can see."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from llenergymeasure.backends import contract


def _no_nvidia_driver() -> bool:
    """Linux without any NVIDIA driver node (/dev/nvidia*, /proc/driver/nvidia, or
    WSL's /dev/dxg) can't have a CUDA device: answering 0 without importing torch
    saves seconds on every `llem` start on a CPU machine."""
    if not sys.platform.startswith("linux"):
        return False
    return not (Path("/proc/driver/nvidia").exists() or Path("/dev/dxg").exists()
                or any(Path("/dev").glob("nvidia*")))


def cuda_device_count() -> int:
    if _no_nvidia_driver():
        return 0
    try:
        import torch
    except ImportError:
        return 0
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_device(config_device: str) -> str:
    """The device this run uses: the runner's remapping (a container sees its pinned
    GPU as cuda:0) wins over the experiment's `device:`."""
    return resolve_device(os.environ.get(contract.ENV_DEVICE) or config_device)


def resolve_device(spec: str) -> str:
    """`auto` -> `cuda:0` when a CUDA GPU is visible, else `cpu`; `cuda` -> `cuda:0`."""
    n = cuda_device_count()
    if spec == "auto":
        return "cuda:0" if n else "cpu"
    if spec == "cpu":
        return "cpu"
    index = int(spec.split(":")[1]) if ":" in spec else 0
    if index >= n:
        seen = f"{n} CUDA device(s) are visible" if n else "no CUDA GPU is visible"
        raise ValueError(f"device: '{spec}' requested but {seen}; use device: auto or cpu")
    return f"cuda:{index}"


def resolve_dtype(spec: str, device: str) -> str:
    """`auto` -> float32 on CPU, bfloat16 on GPUs that support it, else float16."""
    if spec != "auto":
        return spec
    if device == "cpu":
        return "float32"
    import torch

    return "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
