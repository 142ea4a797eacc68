"""Environment snapshot, taken inside the run (in the container for Docker runs).

Only named facts are recorded; environment variables are never copied wholesale,
so secrets such as HF_TOKEN cannot leak into results.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from llenergymeasure.backends import __version__, contract
from llenergymeasure.backends.harness.gpu import GpuDevice, GpuDiscovery
from llenergymeasure.backends.harness.process_start import started

_PACKAGES = ("torch", "transformers", "tokenizers", "accelerate", "vllm", "tensorrt_llm",
             "bitsandbytes", "flash_attn", "nvidia-ml-py", "zeus")
# the Slurm ones say which job, array task and node a run on a cluster was (see orchestrator/execution/slurm/)
_VISIBLE_ENV = ("CUDA_VISIBLE_DEVICES", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
                "SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SLURMD_NODENAME")


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _package_versions() -> dict[str, str]:
    out = {}
    for name in _PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def tool_commit() -> str | None:
    env = os.environ.get(contract.ENV_TOOL_COMMIT)
    if env:
        return env
    root = Path(__file__).resolve().parents[2]
    if not (root / ".git").exists():
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        )
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def _image() -> dict[str, Any] | None:
    """The container image this run executes in, as told by the Docker runner."""
    image_id = os.environ.get(contract.ENV_IMAGE_ID)
    if not image_id:
        return None
    digests = os.environ.get(contract.ENV_IMAGE_DIGESTS, "")
    return {
        "id": image_id,
        "ref": os.environ.get(contract.ENV_IMAGE_REF),
        "digests": [d for d in digests.split(",") if d],
        "base": os.environ.get(contract.ENV_IMAGE_BASE),
    }


def gpu_entry(g: GpuDevice) -> dict[str, Any]:
    """One GPU as the snapshot records it: which board, and the settings that move energy
    per token for the same work (a lower power limit or lower applications clocks slow it
    and change J/token; ECC costs memory bandwidth; a MIG slice is not the whole GPU).
    Each as NVML reads it, None where the GPU doesn't offer it. Locked clocks
    (nvidia-smi -lgc/-lmc) have no NVML getter: while they hold the GPU, its clock-event
    reason "applications clocks setting" is active."""
    sm_app, mem_app = g.applications_clocks_mhz()
    return {"index": g.index, "name": g.name, "uuid": g.uuid,
            "power_limit_w": g.enforced_power_limit_w(),
            "applications_sm_clock_mhz": sm_app, "applications_mem_clock_mhz": mem_app,
            "ecc_enabled": g.ecc_enabled(), "mig_enabled": g.mig_enabled()}


def snapshot(gpus: GpuDiscovery) -> dict[str, Any]:
    import psutil

    env: dict[str, Any] = {
        "tool_version": __version__,
        "tool_commit": tool_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_total_gb": round(psutil.virtual_memory().total / 2**30, 2),
        "in_container": Path("/.dockerenv").exists(),
        "packages": _package_versions(),
        "env": {k: os.environ[k] for k in _VISIBLE_ENV if k in os.environ},
        "gpus": [gpu_entry(g) for g in gpus.devices],
        "gpu_driver": gpus.driver_version,
        "image": _image(),
        # a new interpreter, or a fork of the local runner's launcher (with its checks)
        "process_start": started().model_dump(mode="json"),
    }
    try:
        import torch

        env["torch_cuda"] = torch.version.cuda
        env["cuda_available"] = torch.cuda.is_available()
        env["torch_num_threads"] = torch.get_num_threads()  # intra-op threads the run starts with
    except ImportError:
        pass
    return env
