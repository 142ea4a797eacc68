"""One Slurm array task: exactly one run, with the same contract as every runner.

`python -m llenergymeasure.orchestrator.execution.slurm.task STUDY_DIR RUN_ID` reads
the run's experiment from the study's manifest (the orchestrator owns the manifest; a
task never writes it), runs it through the local, Docker or Apptainer runner into
`runs/RUN_ID`, and leaves a TaskRecord in `slurm/tasks/RUN_ID.json` (node, job ids,
GPU UUIDs, start and end) for the orchestrator to fold into the manifest.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from llenergymeasure.backends.clock import utc_now
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution import failures, gpu_levers
from llenergymeasure.orchestrator.execution.host_runs import execute_on_host
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.execution.runners.base import Runner, RunJob
from llenergymeasure.orchestrator.execution.slurm.gpus import NvmlInventory, allocated_uuids
from llenergymeasure.orchestrator.execution.slurm.records import TaskRecord


def _terminate(signum: int, frame: Any) -> None:
    # Slurm sends SIGTERM at the time limit or on scancel: unwind so that the runner
    # stops the run's process group (the harness writes error.json) instead of orphaning it
    raise SystemExit(128 + signum)


def _runner(execute: str, sif: str | None) -> Runner:
    if execute == "docker":
        from llenergymeasure.orchestrator.execution.runners.docker import DockerRunner

        return DockerRunner()
    if execute == "apptainer":
        from llenergymeasure.orchestrator.execution.slurm.apptainer import ApptainerRunner

        return ApptainerRunner(sif or "")
    from llenergymeasure.orchestrator.execution.runners.local import LocalRunner

    return LocalRunner()


def _start_record(run_id: str, uuids: list[str]) -> TaskRecord:
    return TaskRecord(
        run_id=run_id,
        job_id=os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID"),
        array_task_id=os.environ.get("SLURM_ARRAY_TASK_ID"),
        task_job_id=os.environ.get("SLURM_JOB_ID"),
        node=os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
        gpu_uuids=uuids,
        started_at=utc_now(),
    )


def _run(manifest: Manifest, run_id: str, args: argparse.Namespace, record: TaskRecord,
         gpus: list[str] | None = None) -> int:
    """The run itself; the exit code of the task."""
    run = manifest.run(run_id)
    experiment = manifest.experiment(run.experiment_index)
    config = ExperimentConfig.model_validate(experiment.config)
    ex = manifest.execution
    run_dir = manifest.run_dir(run_id)
    job = RunJob(config, run_dir, timeout_s=None,  # Slurm enforces the time limit
                 stall_s=ex.get("stall_timeout_s"), **({"stop_grace_s": ex["stop_grace_s"]}
                                                      if ex.get("stop_grace_s") is not None else {}))
    try:
        with _runner(args.execute, args.sif) as runner:
            # gpu: settings on this node's allocated GPUs (else the runner's reading of the device)
            # registered as active on this node: tasks sharing it mark each other cpu_energy_shared
            outcome = execute_on_host(job, lambda: gpu_levers.execute(runner, job, gpus=gpus or None))
    except UserError as e:  # this node can't run it (e.g. the image is not here): the run fails, saying why
        print(f"llem task: {e}", file=sys.stderr, flush=True)
        run_dir.mkdir(parents=True, exist_ok=True)
        failures.write_error_file(run_dir, failures.ErrorReport(
            failures.INFRASTRUCTURE, str(e), 2, experiment.id, record.started_at, utc_now()))
        record.state, record.exit_code, record.error = "failed", 2, str(e)
        return 2
    record.state, record.exit_code, record.error = outcome.state, outcome.exit_code, outcome.error
    return 0 if outcome.state == "done" else (outcome.exit_code or 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llenergymeasure.orchestrator.execution.slurm.task")
    ap.add_argument("study_dir", type=Path)
    ap.add_argument("run_id")
    ap.add_argument("--execute", choices=["local", "docker", "apptainer"], default="local")
    ap.add_argument("--sif", default=None)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)

    manifest = Manifest.load(args.study_dir)
    # gpu: settings a killed task (or llem) left changed on this node are put back first
    gpu_levers.restore_at_start(lambda line: print(f"llem task: {line}", flush=True))
    uuids = allocated_uuids(os.environ, NvmlInventory())
    if uuids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(uuids)  # CUDA binds by UUID from here on
    record = _start_record(args.run_id, uuids)
    record.write(args.study_dir)
    print(f"llem task: run {args.run_id} on {record.node} (job {record.job_id}_{record.array_task_id}, "
          f"GPUs {','.join(uuids) or 'none'})", flush=True)
    try:
        return _run(manifest, args.run_id, args, record, uuids)
    finally:
        record.finished_at = utc_now()
        record.write(args.study_dir)
        print(f"llem task: run {args.run_id} ended: {record.state or 'stopped'}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
