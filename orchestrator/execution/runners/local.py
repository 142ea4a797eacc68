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
from dataclasses import replace
from pathlib import Path

from llenergymeasure.backends import contract
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.devices import resolve_device
from llenergymeasure.backends.harness.environment import tool_commit
from llenergymeasure.backends.harness.gpu import cuda_uuids
from llenergymeasure.backends.paths import import_root
from llenergymeasure.orchestrator.build.engine_store import EngineBuildFailed
from llenergymeasure.orchestrator.build.engines import build_engines, gpu_for, hold_engine, material_for
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.environments import environment_for
from llenergymeasure.orchestrator.execution.outcome import RunOutcome, log_tail, read_outcome
from llenergymeasure.orchestrator.execution.runners.base import Runner, RunJob
from llenergymeasure.orchestrator.execution.watchdog import RunGuard, Stop
from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.study.spec import Study

RUN_MODULE = ["-m", "llenergymeasure.backends"]
ENGINE_BUILD_MODULE = ["-m", "llenergymeasure.backends.tensorrt", "build"]


def stop_process_group(proc: subprocess.Popen, grace_s: float) -> None:
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


class LocalRunner(Runner):
    name = "local"
    # runs use this machine's Python environments (environments.py), not an image's
    host_environments = True

    def __init__(self) -> None:
        self._commit = tool_commit()
        self.engines: dict[str, dict] = {}  # experiment id -> engine key material

    def describe(self) -> str:
        return f"local runner: a fresh process per run ({sys.executable} {' '.join(RUN_MODULE)})"

    def resolve_device(self, spec: str) -> str:
        return resolve_device(spec)  # what the run's own torch will see

    def prepare(self, study: Study, notify: Notify, build: bool = True) -> None:
        for backend in sorted({e.config.backend for e in study.experiments} if self.host_environments else ()):
            env = environment_for(backend)
            if problem := env.missing():
                raise UserError(problem)
            if env.own:
                notify(f"backend {backend}: runs in {env.python.parent.parent}")
        if build:
            self.engines = build_engines(study.experiments, self, notify)

    def gpu_uuids(self, config: ExperimentConfig) -> list[str]:
        try:
            return cuda_uuids(resolve_device(config.device))
        except ValueError:
            return []

    # -- EngineHost: TensorRT-LLM engines are built by a process of their own
    def build_engine(self, config: ExperimentConfig, out_dir: Path) -> None:
        job = RunJob(config, out_dir, extra_env={contract.ENV_TRT_ENGINE_OUT: str(out_dir)})
        code, _ = self._run_process(job, ENGINE_BUILD_MODULE)
        if code != 0:
            raise EngineBuildFailed(
                f"engine build exited {code}; last lines of {out_dir / contract.LOG_FILE}:\n" + log_tail(out_dir)
            )

    def execute(self, job: RunJob) -> RunOutcome:
        env = dict(job.extra_env)
        if job.gpus:  # pinned by the parallel scheduler: only these GPUs exist for the run
            env["CUDA_VISIBLE_DEVICES"] = ",".join(job.gpus)
            if job.config.device != "cpu":
                env[contract.ENV_DEVICE] = "cuda:0"
        if job.config.backend == "tensorrt":
            # engine key material from `prepare`; a Slurm task (no prepare) works it out here
            material = self.engines.get(job.config.config_hash()) or material_for(job.config,
                                                                                gpu_for(self, job.config))
            with hold_engine(material, job.config, self) as entry:
                env[contract.ENV_TRT_ENGINE_DIR] = str(entry.path)
                code, stop = self._run_process(_with_env(job, env), RUN_MODULE)
        else:
            code, stop = self._run_process(_with_env(job, env), RUN_MODULE)
        return read_outcome(job.run_dir, code, *((stop.reason, stop.kind) if stop else ()))

    def command(self, argv: list[str], run_dir: Path, backend: str = "pytorch") -> list[str]:
        """The process for one run, in its backend's Python environment (a container
        runtime wraps it: see slurm/apptainer.py)."""
        return [str(environment_for(backend).python), *argv]

    def _environment(self, job: RunJob) -> dict[str, str]:
        env = dict(os.environ)  # secrets such as HF_TOKEN reach the run via env only
        env[contract.ENV_EXPERIMENT] = job.config.canonical_json()
        env[contract.ENV_RUN_DIR] = str(job.run_dir.resolve())
        env[contract.ENV_RUN_ID] = job.run_dir.name
        env[contract.ENV_PARENT_PID] = str(os.getpid())  # the run stops itself if we die
        env["PYTHONUNBUFFERED"] = "1"
        # the run imports the same llenergymeasure as this process (its checkout, or its install)
        env["PYTHONPATH"] = os.pathsep.join([str(import_root()), *filter(None, [env.get("PYTHONPATH")])])
        env.update(job.extra_env)
        if self._commit:
            env.setdefault(contract.ENV_TOOL_COMMIT, self._commit)
        return env

    def _run_process(self, job: RunJob, argv: list[str]) -> tuple[int | None, Stop | None]:
        """One process to completion: (exit code, why we stopped it if we did)."""
        job.run_dir.mkdir(parents=True, exist_ok=True)
        guard = RunGuard(job.run_dir, job.timeout_s, job.stall_s)
        with open(job.run_dir / contract.LOG_FILE, "wb") as log:
            proc = subprocess.Popen(
                self.command(argv, job.run_dir, job.config.backend),
                env=self._environment(job),
                cwd=job.run_dir,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # Ctrl-C reaches us, and we stop the run cleanly
            )
            try:
                return _wait(proc, job, guard)
            except BaseException:
                stop_process_group(proc, job.stop_grace_s)
                raise


def _with_env(job: RunJob, env: dict[str, str]) -> RunJob:
    return replace(job, extra_env=env)


def _wait(proc: subprocess.Popen, job: RunJob, guard: RunGuard) -> tuple[int | None, Stop | None]:
    while True:
        try:
            return proc.wait(timeout=0.5), None
        except subprocess.TimeoutExpired:
            if job.on_tick:
                job.on_tick(time.monotonic() - guard.t0)
            stop = guard.check()
            if stop is not None:
                stop_process_group(proc, job.stop_grace_s)
                return proc.returncode, stop
