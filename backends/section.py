"""What every backend's settings section (`pytorch:`, `vllm:`, `tensorrt:`) is.

A section is a strict pydantic model (unknown keys and wrong types are refused) that also declares
the things the rest of llem needs to know about it without looking inside: how many GPUs
one run spans, which settings a given device cannot run, and which a given checkpoint cannot.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from llenergymeasure.backends.limits import STRICT


class BackendSection(BaseModel):
    model_config = STRICT  # unknown keys, wrong types and unbounded numbers are refused (limits.py)

    @property
    def gpus_per_run(self) -> int:
        """GPUs one run spans when it runs on CUDA (tensor x pipeline parallel)."""
        return 1

    def device_problem(self, device: str) -> str | None:
        """Why these settings cannot run on `device` ("cpu", "cuda:0", ...), or None.
        Checked before anything runs, so a study never fails halfway for it."""
        return None

    def checkpoint_problem(self, model_dir: Path) -> str | None:
        """Why these settings cannot run with the checkpoint in `model_dir` (a local
        directory: built-in, a path, or a cached download), or None. Checked before
        anything runs, like device_problem."""
        return None
