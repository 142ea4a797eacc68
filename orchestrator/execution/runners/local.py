"""Local runner: each run is a fresh `python -m llenergymeasure.backends` process on this machine.

Process isolation gives every run a clean interpreter, allocator and CUDA
context, exactly as a container would, without needing Docker.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.backends import contract
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.devices import resolve_device
from llenergymeasure.backends.harness.environment import tool_commit
from llenergymeasure.backends.harness.gpu import cuda_uuids
from llenergymeasure.orchestrator.execution.outcome import RunOutcome, log_tail, read_outcome
from llenergymeasure.orchestrator.build.engines import build_engines, gpu_for, hold_engine, material_for
from llenergymeasure.orchestrator.build.engine_store import EngineBuildFailed
from llenergymeasure.orchestrator.execution.runners.base import register_runner
from llenergymeasure.orchestrator.execution.watchdog import RunGuard, Stop

KILL_GRACE_S = 10.0


def _stop(proc: subprocess.Popen, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the run's process group (the harness then writes error.json), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
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
        self.engines: dict[str, dict] = {}  # experiment id -> engine key material

    def describe(self) -> str:
        return f"local runner: a fresh process per run ({sys.executable} -m llenergymeasure.backends)"

    def resolve_device(self, spec: str) -> str:
        return resolve_device(spec)  # what the run's own torch will see

    def prepare(self, study: Any, notify: Notify, build: bool = True) -> None:
        if build:
            self.engines = build_engines(study.experiments, self, notify)

    # -- EngineHost: TensorRT-LLM engines are built by a process of their own
    def gpu_uuids(self, config: ExperimentConfig) -> list[str]:
        try:
            return cuda_uuids(resolve_device(config.device))
        except ValueError:
            return []

    def build_engine(self, config: ExperimentConfig, out_dir: Path) -> None:
        code, _ = self._run_process(
            config, out_dir, None, None, argv=["-m", "llenergymeasure.backends.tensorrt", "build"],
            extra_env={contract.ENV_TRT_ENGINE_OUT: str(out_dir)},
        )
        if code != 0:
            raise EngineBuildFailed(
                f"engine build exited {code}; last lines of {out_dir / contract.LOG_FILE}:\n" + log_tail(out_dir)
            )

    def execute(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        timeout_s: float | None,
        on_tick: Callable[[float], None] | None = None,
        extra_env: dict[str, str] | None = None,
        stall_s: float | None = None,
        stop_grace_s: float = KILL_GRACE_S,
        gpus: Sequence[str] | None = None,
    ) -> RunOutcome:
        env = dict(extra_env or {})
        if gpus:  # pinned by the parallel scheduler: only these GPUs exist for the run
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
            if config.device != "cpu":
                env[contract.ENV_DEVICE] = "cuda:0"
        limits = dict(stall_s=stall_s, stop_grace_s=stop_grace_s)
        if config.backend == "tensorrt":
            # engine key material from `prepare`; a Slurm task (no prepare) works it out here
            material = self.engines.get(config.config_hash()) or material_for(config, gpu_for(self, config))
            with hold_engine(material, config, self) as entry:
                env[contract.ENV_TRT_ENGINE_DIR] = str(entry.path)
                code, stop = self._run_process(config, run_dir, timeout_s, on_tick, extra_env=env, **limits)
        else:
            code, stop = self._run_process(config, run_dir, timeout_s, on_tick, extra_env=env, **limits)
        return read_outcome(run_dir, code, *((stop.reason, stop.kind) if stop else ()))

    def command(self, argv: list[str], run_dir: Path) -> list[str]:
        """The process for one run (a container runtime wraps it: see slurm/apptainer.py)."""
        return [sys.executable, *argv]

    def _run_process(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        timeout_s: float | None,
        on_tick: Callable[[float], None] | None,
        argv: list[str] | None = None,
        extra_env: dict[str, str] | None = None,
        stall_s: float | None = None,
        stop_grace_s: float = KILL_GRACE_S,
    ) -> tuple[int | None, Stop | None]:
        """One `python -m llenergymeasure.backends` process to completion: (exit code, why we stopped
        it if we did)."""
        run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)  # secrets such as HF_TOKEN reach the run via env only
        env[contract.ENV_EXPERIMENT] = config.canonical_json()
        env[contract.ENV_RUN_DIR] = str(run_dir.resolve())
        env[contract.ENV_RUN_ID] = run_dir.name
        env[contract.ENV_PARENT_PID] = str(os.getpid())  # the run stops itself if we die
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra_env or {})
        if self._commit:
            env.setdefault(contract.ENV_TOOL_COMMIT, self._commit)
        guard = RunGuard(run_dir, timeout_s, stall_s)
        with open(run_dir / contract.LOG_FILE, "wb") as log:
            proc = subprocess.Popen(
                self.command(argv or ["-m", "llenergymeasure.backends"], run_dir),
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
                        return proc.wait(timeout=0.5), None
                    except subprocess.TimeoutExpired:
                        if on_tick:
                            on_tick(time.monotonic() - guard.t0)
                        stop = guard.check()
                        if stop is not None:
                            _stop(proc, stop_grace_s)
                            return proc.returncode, stop
            except BaseException:
                _stop(proc, stop_grace_s)
                raise
