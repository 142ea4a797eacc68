"""Local runner: each run is a fresh process on this machine.

Process isolation gives every run a clean interpreter, allocator and CUDA
context, exactly as a container would, without needing Docker. A run is either a new
`python -m llenergymeasure.backends` interpreter or, for backends the table marks
`pre_imported` (PyTorch), a child forked from a launcher that imported torch,
transformers and the harness once (backends/launcher/, runners/launcher.py): the same
contract, files, watchdog and stop, without seconds of imports per run.
LLEM_LAUNCHER=0 makes every run a new interpreter.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from llenergymeasure.backends import contract
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.devices import resolve_device
from llenergymeasure.backends.harness.environment import tool_commit
from llenergymeasure.backends.harness.gpu import cuda_uuids
from llenergymeasure.backends.paths import import_root
from llenergymeasure.backends.table import TABLE, backend_row
from llenergymeasure.orchestrator.build.engine_store import EngineBuildFailed
from llenergymeasure.orchestrator.build.engines import build_engines, gpu_for, hold_engine, material_for
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.environments import environment_for
from llenergymeasure.orchestrator.execution.outcome import RunOutcome, log_tail, read_outcome
from llenergymeasure.orchestrator.execution.runners import launcher as launching
from llenergymeasure.orchestrator.execution.runners.base import Runner, RunJob
from llenergymeasure.orchestrator.execution.runners.launcher import LaunchedRun, Launcher, LauncherUnavailable, RunProcess
from llenergymeasure.orchestrator.execution.watchdog import RunGuard, Stop
from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.study.spec import Study

RUN_MODULE = ["-m", "llenergymeasure.backends"]
ENGINE_BUILD_MODULE = ["-m", "llenergymeasure.backends.tensorrt", "build"]


def stop_process_group(proc: RunProcess, grace_s: float) -> None:
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
    # runs of `pre_imported` backends fork from a launcher in this machine's environment; a
    # runner whose runs execute elsewhere (Apptainer's image) starts each one as a command
    pre_imports = True

    def __init__(self) -> None:
        self._commit = tool_commit()
        self.engines: dict[str, dict] = {}  # experiment id -> engine key material
        self._launcher: Launcher | None = None
        self._launcher_lock = threading.Lock()  # parallel GPUs: several runs start at once
        self._launcher_off: str | None = None  # why runs no longer use the launcher
        self._notify: Notify = _to_stderr

    def describe(self) -> str:
        how = f"a fresh process per run ({sys.executable} {' '.join(RUN_MODULE)}"
        if self.pre_imports and launching.enabled():
            forked = ", ".join(r.name for r in TABLE if r.pre_imported and not environment_for(r.name).own)
            how += f"; {forked} runs forked from a pre-imported launcher, LLEM_LAUNCHER=0 to turn it off"
        return f"local runner: {how})"

    def resolve_device(self, spec: str) -> str:
        return resolve_device(spec)  # what the run's own torch will see

    def prepare(self, study: Study, notify: Notify, build: bool = True) -> None:
        self._notify = notify
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

    def ready_for(self, config: ExperimentConfig) -> None:
        """Start the launcher this experiment's runs fork from, if they use one and none runs
        yet. Its imports (seconds) are paid once per study, not by a run: the study loop
        calls this before it records a run as started, so they count in the study's wall
        time and not in its first run's. A launcher that cannot start is said once here, and
        the run starts a new interpreter."""
        self._launcher_for(config.backend)

    def close(self) -> None:
        """End the launcher, if one was started (the study's session is over)."""
        with self._launcher_lock:
            if self._launcher is not None:
                self._launcher.close()
                self._launcher = None

    def _shared_environment(self) -> dict[str, str]:
        """What every run's environment has: this process's, and how to reach llem and us.
        The launcher starts with exactly this, so it imports what a run would import."""
        env = dict(os.environ)  # secrets such as HF_TOKEN reach the run via env only
        env[contract.ENV_PARENT_PID] = str(os.getpid())  # the run stops itself if we die
        env["PYTHONUNBUFFERED"] = "1"
        # the run imports the same llenergymeasure as this process (its checkout, or its install)
        env["PYTHONPATH"] = os.pathsep.join([str(import_root()), *filter(None, [env.get("PYTHONPATH")])])
        if self._commit:
            env.setdefault(contract.ENV_TOOL_COMMIT, self._commit)
        return env

    def _environment(self, job: RunJob) -> dict[str, str]:
        env = self._shared_environment()
        env[contract.ENV_EXPERIMENT] = job.config.canonical_json()
        env[contract.ENV_RUN_DIR] = str(job.run_dir.resolve())
        env[contract.ENV_RUN_ID] = job.run_dir.name
        env.update(job.extra_env)
        return env

    def _run_process(self, job: RunJob, argv: list[str]) -> tuple[int | None, Stop | None]:
        """One process to completion: (exit code, why we stopped it if we did)."""
        job.run_dir.mkdir(parents=True, exist_ok=True)
        launcher = self._launcher_for(job.config.backend) if argv == RUN_MODULE else None
        guard = RunGuard(job.run_dir, job.timeout_s, job.stall_s)
        log_path = job.run_dir / contract.LOG_FILE
        with open(log_path, "wb") as log:
            proc: RunProcess | None = self._fork(launcher, job, log_path) if launcher else None
            if proc is None:
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

    def _launcher_for(self, backend: str) -> Launcher | None:
        """The launcher this run forks from, started on the first run that needs one; None
        when the run must be a new interpreter."""
        row, env = backend_row(backend), environment_for(backend)
        if not (self.pre_imports and row.pre_imported and not env.own and launching.enabled()):
            return None
        shared = self._shared_environment()
        with self._launcher_lock:
            if self._launcher_off is not None:
                return None
            if self._launcher is None:
                try:
                    self._launcher = Launcher.start(env.python, shared)
                except LauncherUnavailable as e:
                    self._give_up(str(e))
                    return None
            # this process's environment changed since the launcher started: what the run
            # would import under it may differ, so it gets a new interpreter
            return self._launcher if self._launcher.env == shared else None

    def _fork(self, launcher: Launcher, job: RunJob, log_path: Path) -> LaunchedRun | None:
        try:
            return launcher.launch(self._environment(job), job.run_dir, log_path)
        except LauncherUnavailable as e:
            with self._launcher_lock:
                self._give_up(str(e))
            return None

    def _give_up(self, why: str) -> None:
        """No more runs from the launcher in this session (said once); under the lock. It
        is left to `close`: runs other threads forked from it may still be going."""
        if self._launcher_off is None:
            self._notify(f"local runner: {why}; this run and every later one start a new interpreter "
                         f"(as with {launching.ENV_SWITCH}=0)")
        self._launcher_off = why


def _with_env(job: RunJob, env: dict[str, str]) -> RunJob:
    return replace(job, extra_env=env)


def _to_stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _wait(proc: RunProcess, job: RunJob, guard: RunGuard) -> tuple[int | None, Stop | None]:
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
