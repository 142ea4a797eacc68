"""One Slurm array task: exactly one run, with the same contract as every runner.

`python -m llenergymeasure.orchestrator.execution.slurm.task STUDY_DIR RUN_ID` reads the run's experiment
from the study's manifest (the orchestrator owns the manifest; a task never
writes it), runs it through the local or Docker runner into `runs/RUN_ID`, and
leaves a small record in `slurm/tasks/RUN_ID.json` (node, job ids, GPU UUIDs,
start and end) for the orchestrator to fold into the manifest.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from llenergymeasure.backends.clock import utc_now
from llenergymeasure.backends.atomic import write_json_atomic
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.execution.slurm.gpus import NvmlInventory, allocated_uuids

TASKS_DIR = "slurm/tasks"



def task_record_path(study_dir: Path, run_id: str) -> Path:
    return study_dir / TASKS_DIR / f"{run_id}.json"


def read_task_record(study_dir: Path, run_id: str) -> dict[str, Any]:
    try:
        return json.loads(task_record_path(study_dir, run_id).read_text())
    except (OSError, ValueError):
        return {}


def _terminate(signum: int, frame: Any) -> None:
    # Slurm sends SIGTERM at the time limit or on scancel: unwind so that the runner
    # stops the run's process group (the harness writes error.json) instead of orphaning it
    raise SystemExit(128 + signum)


def _runner(execute: str, sif: str | None):
    if execute == "docker":
        from llenergymeasure.orchestrator.execution.runners.docker import DockerRunner

        return DockerRunner()
    if execute == "apptainer":
        from llenergymeasure.orchestrator.execution.slurm.apptainer import ApptainerRunner

        return ApptainerRunner(sif or "")
    from llenergymeasure.orchestrator.execution.runners.local import LocalRunner

    return LocalRunner()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llenergymeasure.orchestrator.execution.slurm.task")
    ap.add_argument("study_dir", type=Path)
    ap.add_argument("run_id")
    ap.add_argument("--execute", choices=["local", "docker", "apptainer"], default="local")
    ap.add_argument("--sif", default=None)
    args = ap.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminate)

    manifest = Manifest.load(args.study_dir)
    run = manifest.run(args.run_id)
    config = ExperimentConfig.model_validate(manifest.experiment(run["experiment_index"])["config"])
    uuids = allocated_uuids(os.environ, NvmlInventory())
    if uuids:
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(uuids)  # CUDA binds by UUID from here on
    record: dict[str, Any] = {
        "run_id": args.run_id,
        "job_id": os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID"),
        "array_task_id": os.environ.get("SLURM_ARRAY_TASK_ID"),
        "task_job_id": os.environ.get("SLURM_JOB_ID"),
        "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
        "gpu_uuids": uuids,
        "started_at": utc_now(),
    }
    path = task_record_path(args.study_dir, args.run_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, record)
    print(f"llem task: run {args.run_id} on {record['node']} (job {record['job_id']}_{record['array_task_id']}, "
          f"GPUs {','.join(uuids) or 'none'})", flush=True)

    code = 1
    try:
        ex = manifest.data.get("execution", {})
        limits = {k: v for k, v in (("stall_s", ex.get("stall_timeout_s")), ("stop_grace_s", ex.get("stop_grace_s")))
                  if v is not None}
        run_dir = args.study_dir / run["run_dir"]
        try:
            outcome = _runner(args.execute, args.sif).execute(config, run_dir, None, **limits)  # Slurm: time limit
        except UserError as e:  # this node can't run it (e.g. the image is not here): the run fails, saying why
            from llenergymeasure.orchestrator.execution import failures  # (imported here: it pulls in numpy, and every task pays its imports)

            print(f"llem task: {e}", file=sys.stderr, flush=True)
            run_dir.mkdir(parents=True, exist_ok=True)
            failures.write_error_file(run_dir, failures.INFRASTRUCTURE, str(e), 2,
                                      manifest.experiment(run["experiment_index"]).get("id"),
                                      record["started_at"], utc_now())
            record.update(state="failed", exit_code=2, error=str(e))
            return 2
        code = 0 if outcome.state == "done" else (outcome.exit_code or 1)
        record.update(state=outcome.state, exit_code=outcome.exit_code, error=outcome.error)
        return code
    finally:
        record["finished_at"] = utc_now()
        write_json_atomic(path, record)
        print(f"llem task: run {args.run_id} ended: {record.get('state', 'stopped')}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
