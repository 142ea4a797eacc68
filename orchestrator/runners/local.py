"""Local runner: each run is a fresh `python -m backends` process on this machine.

Process isolation gives every run a clean interpreter, allocator and CUDA
context, exactly as a container would, without needing Docker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from backends import contract
from backends.config import ExperimentConfig
from backends.devices import resolve_device
from backends.harness.environment import tool_commit
from orchestrator.collect import RunOutcome, read_outcome
from orchestrator.runners.base import register_runner

KILL_GRACE_S = 10.0


def _stop(proc: subprocess.Popen) -> None:
    """SIGTERM the run's process group (the harness then writes error.json), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, KILL_GRACE_S), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


@register_runner("local")
class LocalRunner:
    name = "local"

    def __init__(self) -> None:
        self._commit = tool_commit()

    def describe(self) -> str:
        return f"local runner: a fresh process per run ({sys.executable} -m backends)"

    def resolve_device(self, spec: str) -> str:
        return resolve_device(spec)  # what the run's own torch will see

    def prepare(self, study: object, notify: object, build: bool = True) -> None:
        pass

    def execute(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        timeout_s: float | None,
        on_tick: Callable[[float], None] | None = None,
    ) -> RunOutcome:
        run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)  # secrets such as HF_TOKEN reach the run via env only
        env[contract.ENV_EXPERIMENT] = config.canonical_json()
        env[contract.ENV_RUN_DIR] = str(run_dir.resolve())
        env["PYTHONUNBUFFERED"] = "1"
        if self._commit:
            env.setdefault(contract.ENV_TOOL_COMMIT, self._commit)
        t0 = time.monotonic()
        with open(run_dir / contract.LOG_FILE, "wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "backends"],
                env=env,
                cwd=run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, and we stop the run cleanly
            )
            try:
                while True:
                    try:
                        rc = proc.wait(timeout=0.5)
                        break
                    except subprocess.TimeoutExpired:
                        elapsed = time.monotonic() - t0
                        if on_tick:
                            on_tick(elapsed)
                        if timeout_s is not None and elapsed > timeout_s:
                            _stop(proc)
                            return read_outcome(
                                run_dir, proc.returncode,
                                reason=f"timed out after {timeout_s:g} s (execution.run_timeout_s)",
                            )
            except BaseException:
                _stop(proc)
                raise
        return read_outcome(run_dir, rc)
