"""`execution.parallel_gpus: N`: up to N runs at once on disjoint GPUs of this host.

Wraps the local or Docker runner as a runner that takes the whole plan (like
Slurm's): runs start in plan order, each as soon as a slot and enough free GPUs
exist (`gpu_slots.GpuSlots`), and the inner runner pins the run to exactly those
GPUs by UUID (CUDA_VISIBLE_DEVICES for a process, a device request for a
container), so the harness measures only them. Never two runs on one GPU; a host
without GPUs keeps runs sequential (the plain study loop is used unchanged).

Each run is recorded exactly as the sequential loop records it (recording.py:
attempts kept, error.json, the same failure policy): after `--fail-fast` or
`max_consecutive_failures` no new run starts, the running ones finish, and the
rest are skipped; a lost runner (Docker engine gone) stops scheduling likewise.
`device: cuda:N` only says "a GPU" here: the scheduler chooses which.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from llenergymeasure.backends.clock import utc_now
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.orchestrator.errors import Failure, UserError
from llenergymeasure.orchestrator.execution import failures, gpu_levers
from llenergymeasure.orchestrator.execution.gpu_slots import GpuSlots, HostGpus, NvmlHostGpus, max_parallel
from llenergymeasure.orchestrator.execution.host_runs import execute_on_host
from llenergymeasure.orchestrator.execution.locks import device_keys
from llenergymeasure.orchestrator.execution.manifest import Manifest, StudyLost, StudyStatus
from llenergymeasure.orchestrator.execution.outcome import RunOutcome
from llenergymeasure.orchestrator.execution.recording import (
    LoopResult, Policy, finish_loop, record_lost, record_outcome, resume_hint, stop_reason, stop_study,
)
from llenergymeasure.orchestrator.execution.resume import fresh_run_dir
from llenergymeasure.orchestrator.execution.runners.base import PlanRunner, Runner, RunJob, RunnerLost
from llenergymeasure.orchestrator.execution.signals import describe
from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.study.plan import PlannedRun
from llenergymeasure.orchestrator.study.preflight import Placement
from llenergymeasure.orchestrator.study.spec import Experiment, Study

PARALLEL_RUNNERS = ("local", "docker")


def gpus_needed(config: ExperimentConfig, resolved_device: str) -> int:
    """GPUs one run occupies: its tensor x pipeline parallel size on CUDA, none on the CPU."""
    return config.gpus_per_run if resolved_device.startswith("cuda") else 0


class ParallelRunner(PlanRunner):
    """The inner runner's runs, several at once; the same name, contract and files."""

    def __init__(self, inner: Runner, parallel: int, host: HostGpus, study: Study,
                 gpus_per_run: int | None = None) -> None:
        self.inner = inner
        self.gpus_per_run = gpus_per_run  # None: from each run's config and device
        self.name = inner.name
        self.parallel = parallel
        self.uuids = host.uuids()
        self.study = study
        self.lock = threading.Lock()  # the manifest and the outcome counters

    def describe(self) -> str:
        return (f"{self.inner.describe()}; up to {max_parallel(len(self.uuids), 1, self.parallel)} runs at once "
                f"on disjoint GPUs of this host ({len(self.uuids)} GPU(s))")

    def resolve_device(self, spec: str) -> str:
        return self.inner.resolve_device(spec)

    def prepare(self, study: Study, notify: Notify, build: bool = True) -> None:
        self.inner.prepare(study, notify, build=build)

    def close(self) -> None:
        self.inner.close()

    def gpu_uuids(self, config: ExperimentConfig) -> list[str]:
        return self.inner.gpu_uuids(config)

    def lock_keys(self, study: Study, placements: Mapping[int, Placement]) -> list[str]:
        """Every GPU the scheduler may place a run on."""
        return sorted(device_keys(self.uuids, "cuda:0"))

    def need(self, config: ExperimentConfig) -> int:
        if self.gpus_per_run is not None:
            return self.gpus_per_run
        return gpus_needed(config, self.inner.resolve_device(config.device))

    def run_whole(self, manifest: Manifest, run_ids: list[str], notify: Notify, policy: Policy | None = None,
                  detach: bool = False) -> LoopResult:
        """Run `run_ids` in this order, several at once; the loop's result."""
        planned = {p.run_id: p for p in manifest.planned()}
        return _Schedule(self, manifest, [planned[r] for r in run_ids], notify, policy or Policy()).run()


class _Schedule:
    """One session of parallel runs: starts them, records them, applies the policy."""

    def __init__(self, runner: ParallelRunner, manifest: Manifest, runs: list[PlannedRun], notify: Notify,
                 policy: Policy) -> None:
        self.runner, self.manifest, self.runs, self.notify, self.policy = runner, manifest, runs, notify, policy
        self.slots = GpuSlots(runner.uuids, parallel=runner.parallel)
        self.result = LoopResult()
        self.consecutive = 0
        self.stop: tuple[StudyStatus, str] | None = None
        self.lost: RunnerLost | None = None
        self.gone: StudyLost | None = None  # the study directory (or a finished result) was removed
        self.cancel = threading.Event()  # Ctrl-C/SIGTERM reached the main thread: stop every running run
        self.threads: list[threading.Thread] = []
        self.started: set[str] = set()

    def run(self) -> LoopResult:
        try:
            self._start_all()
            for t in self.threads:
                t.join()
        except StudyLost as e:  # found before a start: stop the running runs, record nothing more
            self._study_gone(e)
        except KeyboardInterrupt as e:
            why = f"interrupted ({describe(e)})"
            with self.runner.lock:
                self.stop = ("interrupted", why)
            self.cancel.set()  # each worker's runner stops its process/container (SIGTERM, then SIGKILL)
            for t in self.threads:
                t.join()
            self.manifest.set_status("interrupted", why)
            raise
        if self.gone is not None:
            for t in self.threads:
                t.join()
            raise self.gone
        if self.lost is not None:
            raise Failure(f"{self.lost}; the study stopped there. Finished runs are kept. When it is back: "
                          f"{resume_hint(self.manifest)}")
        rest = [p.run_id for p in self.runs if p.run_id not in self.started]
        if self.stop and rest:
            stop_study(self.manifest, rest, self.stop, self.result)
            return self.result
        return finish_loop(self.manifest, self.result)

    def _start_all(self) -> None:
        for n, planned in enumerate(self.runs, 1):
            exp = self.runner.study.experiments[planned.experiment_index - 1]
            slot, gpus = self.slots.acquire(self.runner.need(exp.config))  # blocks until free
            with self.runner.lock:
                if self.stop or self.lost or self.gone:
                    self.slots.release(slot)
                    return
                self.manifest.check_intact()  # never start a run into a study someone removed
                fresh_run_dir(self.manifest, planned.run_id)
                self.manifest.update(planned.run_id, "running", started_at=utc_now(), gpu_uuids=list(gpus))
            self.started.add(planned.run_id)
            self.notify(f"[{n}/{len(self.runs)}] {planned.run_id} {exp.label} ... started"
                        + (f" on {', '.join(gpus)}" if gpus else ""))
            t = threading.Thread(target=self._one, args=(planned, exp, slot, gpus), daemon=True)
            t.start()
            self.threads.append(t)

    def _execute(self, planned: PlannedRun, exp: Experiment, gpus: tuple[str, ...]) -> RunOutcome:
        job = RunJob.limited_by(self.runner.study.execution, exp.config, self.manifest.run_dir(planned.run_id),
                                on_tick=self._tick, gpus=gpus)
        try:
            # its gpu: settings on exactly its GPUs; registered as active on this host (cpu_energy_shared)
            return execute_on_host(job, lambda: gpu_levers.execute(self.runner.inner, job))
        except _Cancelled:
            return RunOutcome("failed", None, error=self.stop[1] if self.stop else "interrupted",
                              kind=failures.INTERRUPTED)

    def _one(self, planned: PlannedRun, exp: Experiment, slot: int, gpus: tuple[str, ...]) -> None:
        t0 = time.monotonic()
        try:
            try:
                outcome = self._execute(planned, exp, gpus)
            except RunnerLost as e:
                with self.runner.lock:
                    self.lost = e
                    record_lost(self.manifest, planned.run_id, str(e))
                    self.result.failed.append(planned.run_id)
                self.notify(f"FAILED   {planned.run_id}: {e}")
                return
            except Exception as e:  # noqa: BLE001 - a runner error fails this run, not the others
                outcome = RunOutcome("failed", None, error=f"{type(e).__name__}: {e}")
            self._record(planned, outcome)
            on = f" on {', '.join(gpus)}" if gpus else ""
            self.notify(f"{'done' if outcome.state == 'done' else 'FAILED':8} {planned.run_id} after "
                        f"{time.monotonic() - t0:.1f} s{on}" + (f": {outcome.error}" if outcome.error else ""))
        finally:
            self.slots.release(slot)

    def _study_gone(self, e: StudyLost) -> None:
        """The study was removed: every running run is stopped, and nothing more recorded."""
        with self.runner.lock:
            self.gone = self.gone or e
            self.stop = self.stop or ("stopped", str(e))
        self.cancel.set()

    def _record(self, planned: PlannedRun, outcome: RunOutcome) -> None:
        if self.gone is not None:
            return
        try:
            self.manifest.check_intact()  # removed during the run: recording would recreate it
        except StudyLost as e:
            self._study_gone(e)
            return
        with self.runner.lock:
            record_outcome(self.manifest, planned.run_id, outcome)
            if outcome.state == "done":
                self.consecutive = 0
            else:
                self.result.failed.append(planned.run_id)
                self.consecutive += 1
            self.stop = self.stop or stop_reason(self.policy, outcome, planned.run_id, self.consecutive)

    def _tick(self, run_elapsed: float) -> None:
        """Called by the runner while a run goes: raising here makes it stop the run."""
        if self.cancel.is_set():
            raise _Cancelled()


class _Cancelled(KeyboardInterrupt):
    """Raised inside a worker thread so that its runner stops the run as on Ctrl-C."""


def parallel_runner(runner: Runner | PlanRunner, study: Study, notify: Notify,
                    host: HostGpus | None = None) -> Runner | PlanRunner:
    """The runner to use: `runner` itself unless parallel_gpus > 1 can apply here."""
    n = study.execution.parallel_gpus
    if n <= 1 or isinstance(runner, PlanRunner):
        return runner
    if runner.name not in PARALLEL_RUNNERS:
        notify(f"execution.parallel_gpus: {n} applies to the {' and '.join(PARALLEL_RUNNERS)} runners; the "
               f"{runner.name} runner runs one run at a time")
        return runner
    host = host or NvmlHostGpus()
    if not host.uuids():
        notify(f"execution.parallel_gpus: {n}, but this host has no GPU: runs stay sequential")
        return runner
    parallel = ParallelRunner(runner, n, host, study)
    for exp in study.experiments:
        try:
            need = parallel.need(exp.config)
        except ValueError:
            continue  # an impossible device: the preflight check explains it
        if need > len(parallel.uuids):
            raise UserError(f"{study.path}: experiment {exp.index} ({exp.label}) spans {need} GPUs "
                            f"(tensor x pipeline parallel) but this host has {len(parallel.uuids)}; "
                            "lower the parallel sizes or run it on a larger host")
    return parallel
