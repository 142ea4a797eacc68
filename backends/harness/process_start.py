"""How this run's process began: a new interpreter, or a fork of the local runner's
pre-imported launcher (backends/launcher/) with the checks it made just before forking.
The environment snapshot records it in every result (`process_start`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class ForkChecks(BaseModel):
    """What the launcher verified in itself just before forking a run: a child of a
    process with more than one thread, or with CUDA initialised, inherits locks held by
    threads that do not exist in it and a CUDA context it cannot use."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    threads: int  # threads of the launcher (/proc/self/task), the forking one included
    cuda_initialized: bool  # torch.cuda.is_initialized()
    cuda_driver_loaded: bool  # libcuda mapped: the driver was initialised, e.g. by a device count

    def problems(self) -> list[str]:
        """Why forking now would not give the run a clean process ([] when it would)."""
        out = []
        if self.threads != 1:
            out.append(f"{self.threads} threads (a fork keeps only the calling one)")
        if self.cuda_initialized:
            out.append("CUDA is initialised (torch.cuda.is_initialized())")
        if self.cuda_driver_loaded:
            out.append("the CUDA driver is loaded (libcuda is mapped)")
        return out


class ProcessStart(BaseModel):
    """How this run's process began: recorded in result.json's environment."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["interpreter", "fork"] = "interpreter"
    launcher_pid: int | None = None  # the pre-imported launcher it was forked from
    checks: ForkChecks | None = None  # what the launcher verified just before the fork


_started = ProcessStart()


def started() -> ProcessStart:
    return _started


def mark_forked(launcher_pid: int, checks: ForkChecks) -> None:
    """Called once, in the forked child, before the run begins."""
    global _started
    _started = ProcessStart(kind="fork", launcher_pid=launcher_pid, checks=checks)
