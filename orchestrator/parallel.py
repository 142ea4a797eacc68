"""`execution.parallel_gpus: N`: up to N runs at once on disjoint GPUs of this host.

Wraps the local runner as a runner that takes the whole plan (like Slurm's):
runs start in plan order, each as soon as a slot and enough free GPUs exist
(`gpu_slots.GpuSlots`), pinned to its GPUs by UUID through CUDA_VISIBLE_DEVICES,
so the harness measures exactly those. Never two runs on one GPU; a host without
GPUs keeps runs sequential (the study loop is used unchanged).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from backends.config import ExperimentConfig
from orchestrator.collect import RunOutcome
from orchestrator.gpu_slots import GpuSlots, HostGpus, NvmlHostGpus, max_parallel
from orchestrator.manifest import Manifest, utc_now

Notify = Callable[[str], None]


def gpus_needed(config: ExperimentConfig, resolved_device: str) -> int:
    """GPUs one run occupies: one for a CUDA run (multi-GPU runs are not split yet), none on the CPU."""
    return 1 if resolved_device.startswith("cuda") else 0


class ParallelRunner:
    """The inner runner's runs, several at once; the same name, contract and files."""

    takes_whole_plan = True

    def __init__(self, inner: Any, parallel: int, host: HostGpus, study: Any, gpus_per_run: int | None = None) -> None:
        self.inner = inner
        self.gpus_per_run = gpus_per_run  # None: from each run's device
        self.name = inner.name
        self.parallel = parallel
        self.uuids = host.uuids()
        self.study = study
        self.lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:  # anything else (engine hosting, image checks) is the inner runner's
        return getattr(self.inner, name)

    def describe(self) -> str:
        return (f"{self.inner.describe()}; up to {max_parallel(len(self.uuids), 1, self.parallel)} runs at once "
                f"on disjoint GPUs of this host ({len(self.uuids)} GPU(s))")

    def resolve_device(self, spec: str) -> str:
        return self.inner.resolve_device(spec)

    def prepare(self, study: Any, notify: Notify, build: bool = True) -> None:
        self.inner.prepare(study, notify, build=build)

    def execute(self, *args: Any, **kwargs: Any) -> Any:
        return self.inner.execute(*args, **kwargs)

    def run_whole(self, manifest: Manifest, run_ids: list[str], notify: Notify, detach: bool = False) -> Any:
        """Run `run_ids` in this order, several at once; the loop's result."""
        from orchestrator.execute import LoopResult

        self.run_ids = run_ids
        self._follow(manifest, notify)
        return LoopResult(failed=[r for r in run_ids if manifest.run(r)["state"] == "failed"])

    def _follow(self, manifest: Manifest, notify: Notify) -> bool:
        slots = GpuSlots(self.uuids, parallel=self.parallel)
        timeout = self.study.execution.run_timeout_s
        threads: list[threading.Thread] = []
        stop = threading.Event()

        def one(run_id: str, config: ExperimentConfig, slot: int, gpus: tuple[str, ...]) -> None:
            try:
                env = {"CUDA_VISIBLE_DEVICES": ",".join(gpus)} if gpus else {}
                try:
                    outcome = self.inner.execute(config, manifest.study_dir / "runs" / run_id, timeout, extra_env=env,
                                                 stall_s=self.study.execution.stall_timeout_s,
                                                 stop_grace_s=self.study.execution.stop_grace_s)
                except Exception as e:  # noqa: BLE001 - a runner error fails this run, not the others
                    outcome = RunOutcome("failed", None, error=f"{type(e).__name__}: {e}")
                with self.lock:
                    manifest.update(run_id, outcome.state, finished_at=utc_now(), exit_code=outcome.exit_code,
                                    error=outcome.error)
                notify(f"{outcome.state:8} {run_id}" + (f" on {', '.join(gpus)}" if gpus else "")
                       + (f": {outcome.error}" if outcome.error else ""))
            finally:
                slots.release(slot)

        try:
            for run_id in self.run_ids:
                run = manifest.run(run_id)
                exp = self.study.experiments[run["experiment_index"] - 1]
                need = self.gpus_per_run if self.gpus_per_run is not None else \
                    gpus_needed(exp.config, self.inner.resolve_device(exp.config.device))
                slot, gpus = slots.acquire(need)  # blocks until the GPUs are free
                if stop.is_set():
                    slots.release(slot)
                    break
                with self.lock:
                    manifest.update(run_id, "running", started_at=utc_now(), gpu_uuids=list(gpus))
                t = threading.Thread(target=one, args=(run_id, exp.config, slot, gpus), daemon=True)
                t.start()
                threads.append(t)
            for t in threads:
                t.join()
        except KeyboardInterrupt:
            stop.set()
            with self.lock:
                for r in manifest.data["runs"]:
                    if r["state"] == "running":
                        r.update(state="failed", finished_at=utc_now(), error="interrupted (Ctrl-C)")
                manifest.save()
            raise
        return True


def parallel_runner(runner: Any, study: Any, notify: Notify, host: HostGpus | None = None) -> Any:
    """The runner to use: `runner` itself unless parallel_gpus > 1 can apply here."""
    n = getattr(study.execution, "parallel_gpus", 1)
    if n <= 1 or getattr(runner, "takes_whole_plan", False):
        return runner
    if runner.name != "local":
        notify(f"execution.parallel_gpus: {n} applies to the local runner only so far; the {runner.name} "
               "runner runs one run at a time")
        return runner
    host = host or NvmlHostGpus()
    if not host.uuids():
        notify(f"execution.parallel_gpus: {n}, but this host has no GPU: runs stay sequential")
        return runner
    return ParallelRunner(runner, n, host, study)
