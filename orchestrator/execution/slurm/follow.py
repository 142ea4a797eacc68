"""Following submitted arrays: Slurm task states -> manifest run states, with reasons.

The orchestrator is the manifest's only writer. A poll reads each submission's
tasks (`scontrol`, then the job-completion log for tasks slurmctld has forgotten,
then the task's own record), and moves runs pending -> running -> done | failed.
"""

from __future__ import annotations

import time
from typing import Any

from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.execution.outcome import read_outcome
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.orchestrator.execution.slurm import commands
from llenergymeasure.orchestrator.execution.slurm.commands import ACTIVE, WAITING, TaskState
from llenergymeasure.orchestrator.execution.slurm.task import read_task_record


# why a run ended, for Slurm's final states other than COMPLETED
REASONS = {
    "TIMEOUT": "exceeded its Slurm time limit (slurm.time_limit {time_limit})",
    "OUT_OF_MEMORY": "ran out of memory (slurm.mem_per_run {mem})",
    "CANCELLED": "cancelled (scancel, Ctrl-C or an administrator)",
    "NODE_FAIL": "its node {node} failed",
    "PREEMPTED": "preempted by a higher-priority job",
    "BOOT_FAIL": "its node {node} failed to boot",
    "DEADLINE": "reached its deadline before it could finish",
}


def submissions(manifest: Manifest) -> list[dict[str, Any]]:
    return manifest.data.setdefault("slurm", {}).setdefault("submissions", [])


def _final_reason(task: TaskState, run_dir_reason: str | None, settings: dict[str, Any]) -> str:
    if task.state == "FAILED":
        why = f"Slurm FAILED (exit code {task.exit_code})"
        return f"{why}: {run_dir_reason}" if run_dir_reason else why
    template = REASONS.get(task.state, "ended in Slurm state {state}")
    text = template.format(time_limit=settings.get("time_limit"), mem=settings.get("mem_per_run") or "default",
                           node=task.node or "?", state=task.state)
    return f"Slurm {task.state}: {text}"


def poll(manifest: Manifest, notify: Notify | None = None) -> bool:
    """One look at every submission; True when no run is pending or running."""
    settings = manifest.data.get("slurm", {}).get("settings", {})
    changed = False
    for sub in submissions(manifest):
        open_runs = [r for r in sub["runs"] if manifest.run(r)["state"] in ("pending", "running")]
        if not open_runs:
            continue
        live = commands.array_states(sub["job_id"])  # None: slurmctld has forgotten the whole array
        tasks = dict(live or {})
        if any(i not in tasks for i, r in enumerate(sub["runs"]) if r in open_runs):
            tasks = {**commands.finished_elsewhere(sub["job_id"]), **tasks}
        for index, run_id in enumerate(sub["runs"]):
            if run_id not in open_runs:
                continue
            changed |= _apply(manifest, run_id, sub["job_id"], index, tasks.get(index), settings, notify,
                              forgotten=live is None)
    if changed:
        manifest.save()
    return all(r["state"] not in ("pending", "running") for r in manifest.data["runs"])


def _apply(manifest: Manifest, run_id: str, job_id: str, index: int, task: TaskState | None,
           settings: dict[str, Any], notify: Notify | None, forgotten: bool = False) -> bool:
    run = manifest.run(run_id)
    record = read_task_record(manifest.study_dir, run_id)
    if task is None:
        if "finished_at" not in record:
            if not forgotten:
                return False  # not visible yet
            # the array is gone from slurmctld, and neither accounting nor the run kept a trace
            run.update(state="failed", finished_at=utc_now(), error=(
                f"Slurm no longer knows job {job_id} and the run left no record: it never started, or its "
                "node lost it; `llem resubmit` runs it again"), slurm={**run.get("slurm", {}), "state": "UNKNOWN"})
            return True
        code = record.get("exit_code")
        task = TaskState(index, "COMPLETED" if record.get("state") == "done" else "FAILED",
                         exit_code=0 if record.get("state") == "done" else (code or 1), node=record.get("node"))
    slurm = {**run.get("slurm", {}), "job_id": job_id, "array_task_id": index, "state": task.state}
    if task.node:
        slurm["node"] = task.node
    if record.get("gpu_uuids") is not None:
        slurm["gpu_uuids"] = record["gpu_uuids"]
    started = record.get("started_at") or run.get("started_at")
    if task.state in WAITING:
        if run.get("slurm") != slurm:
            run["slurm"] = slurm
            return True
        return False
    if task.state in ACTIVE:
        if run["state"] != "running" or run.get("slurm") != slurm or run.get("started_at") != started:
            if run["state"] != "running" and notify:
                notify(f"running  {run_id} on {task.node} (job {job_id}_{index})")
            run.update(state="running", started_at=started, slurm=slurm)
            return True
        return False
    run_dir = manifest.study_dir / run["run_dir"]
    if task.state == "COMPLETED":
        outcome = read_outcome(run_dir, 0)
        state, error = outcome.state, outcome.error
    else:
        outcome = read_outcome(run_dir, task.exit_code or 1)
        has_own_reason = (run_dir / "error.json").exists()
        state, error = "failed", _final_reason(task, outcome.error if has_own_reason or task.state == "FAILED" else None,
                                              settings)
    run.update(state=state, started_at=started, finished_at=record.get("finished_at") or utc_now(),
               exit_code=task.exit_code, error=error, slurm=slurm)
    if notify:
        notify(f"{state:8} {run_id}" + (f": {error}" if error else "") + f" (job {job_id}_{index}, {task.node})")
    return True


def follow(manifest: Manifest, interval_s: float, notify: Notify | None = None) -> None:
    """Poll until every run has ended."""
    while not poll(manifest, notify):
        time.sleep(interval_s)


def cancel_open(manifest: Manifest, why: str) -> None:
    """scancel every submission with runs still open; mark those runs failed with `why`."""
    for sub in submissions(manifest):
        if any(manifest.run(r)["state"] in ("pending", "running") for r in sub["runs"]):
            commands.scancel(sub["job_id"])
    for r in manifest.data["runs"]:
        if r["state"] in ("pending", "running"):
            r.update(state="failed", finished_at=utc_now(), error=why)
    manifest.save()
