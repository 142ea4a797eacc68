"""Following submitted arrays: Slurm task states -> manifest run states, with reasons.

The orchestrator is the manifest's only writer. A poll reads each submission's
tasks (`scontrol`, then the job-completion log for tasks slurmctld has forgotten,
then the task's own record), and moves runs pending -> running -> done | failed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from llenergymeasure.backends.clock import utc_now
from llenergymeasure.orchestrator.execution.manifest import Manifest, RunEntry, SlurmRecord, SlurmTask, Submission
from llenergymeasure.orchestrator.execution.outcome import read_outcome
from llenergymeasure.orchestrator.execution.slurm import commands
from llenergymeasure.orchestrator.execution.slurm.commands import ACTIVE, WAITING, TaskState
from llenergymeasure.orchestrator.execution.slurm.records import TaskRecord, read_task_record
from llenergymeasure.orchestrator.notify import Notify

OPEN = ("pending", "running")

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


def slurm_record(manifest: Manifest) -> SlurmRecord:
    if manifest.slurm is None:
        manifest.slurm = SlurmRecord()
    return manifest.slurm


def _final_reason(task: TaskState, run_dir_reason: str | None, settings: dict[str, Any]) -> str:
    if task.state == "FAILED":
        why = f"Slurm FAILED (exit code {task.exit_code})"
        return f"{why}: {run_dir_reason}" if run_dir_reason else why
    template = REASONS.get(task.state, "ended in Slurm state {state}")
    text = template.format(time_limit=settings.get("time_limit"), mem=settings.get("mem_per_run") or "default",
                           node=task.node or "?", state=task.state)
    return f"Slurm {task.state}: {text}"


@dataclass
class _Seen:
    """What one poll saw of one run's array task."""

    job_id: str
    index: int
    task: TaskState | None
    forgotten: bool  # slurmctld no longer knows the array


def poll(manifest: Manifest, notify: Notify | None = None) -> bool:
    """One look at every submission; True when no run is pending or running."""
    changed = False
    for sub in slurm_record(manifest).submissions:
        open_runs = [r for r in sub.runs if manifest.run(r).state in OPEN]
        if not open_runs:
            continue
        for run_id, seen in _look(sub, open_runs).items():
            changed |= _apply(manifest, run_id, seen, notify)
    if changed:
        manifest.save()
    return all(r.state not in OPEN for r in manifest.runs)


def _look(sub: Submission, open_runs: list[str]) -> dict[str, _Seen]:
    live = commands.array_states(sub.job_id)  # None: slurmctld has forgotten the whole array
    tasks = dict(live or {})
    if any(i not in tasks for i, r in enumerate(sub.runs) if r in open_runs):
        tasks = {**commands.finished_elsewhere(sub.job_id), **tasks}
    return {run_id: _Seen(sub.job_id, i, tasks.get(i), forgotten=live is None)
            for i, run_id in enumerate(sub.runs) if run_id in open_runs}


def _task_from_record(seen: _Seen, record: TaskRecord) -> TaskState:
    """Slurm forgot the task, but the task itself recorded how it ended."""
    done = record.state == "done"
    return TaskState(seen.index, "COMPLETED" if done else "FAILED",
                     exit_code=0 if done else (record.exit_code or 1), node=record.node)


def _apply(manifest: Manifest, run_id: str, seen: _Seen, notify: Notify | None) -> bool:
    run = manifest.run(run_id)
    record = read_task_record(manifest.study_dir, run_id)
    task = seen.task
    if task is None:
        if record is None or record.finished_at is None:
            return seen.forgotten and _forgotten(run, seen.job_id)
        task = _task_from_record(seen, record)
    slurm = SlurmTask(job_id=seen.job_id, array_task_id=seen.index, state=task.state,
                      node=task.node or (run.slurm.node if run.slurm else None),
                      gpu_uuids=record.gpu_uuids if record else (run.slurm.gpu_uuids if run.slurm else None))
    started = (record.started_at if record else None) or run.started_at
    if task.state in WAITING:
        return _set(run, slurm=slurm)
    if task.state in ACTIVE:
        if run.state != "running" and notify:
            notify(f"running  {run_id} on {task.node} (job {seen.job_id}_{seen.index})")
        return _set(run, state="running", started_at=started, slurm=slurm)
    state, error = _ended(manifest, run, task)
    _set(run, state=state, started_at=started, finished_at=(record.finished_at if record else None) or utc_now(),
         exit_code=task.exit_code, error=error, slurm=slurm)
    if notify:
        notify(f"{state:8} {run_id}" + (f": {error}" if error else "") + f" (job {seen.job_id}_{seen.index}, {task.node})")
    return True


def _ended(manifest: Manifest, run: RunEntry, task: TaskState) -> tuple[str, str | None]:
    run_dir = manifest.run_dir(run.run_id)
    if task.state == "COMPLETED":
        outcome = read_outcome(run_dir, 0)
        return outcome.state, outcome.error
    outcome = read_outcome(run_dir, task.exit_code or 1)
    own = outcome.error if (run_dir / "error.json").exists() or task.state == "FAILED" else None
    return "failed", _final_reason(task, own, slurm_record(manifest).settings)


def _forgotten(run: RunEntry, job_id: str) -> bool:
    """The array is gone from slurmctld, and neither accounting nor the run kept a trace."""
    _set(run, state="failed", finished_at=utc_now(), slurm=(run.slurm or SlurmTask()).model_copy(
        update={"state": "UNKNOWN"}), error=(
        f"Slurm no longer knows job {job_id} and the run left no record: it never started, or its "
        "node lost it; `llem resubmit` runs it again"))
    return True


def _set(run: RunEntry, **fields: object) -> bool:
    """Set fields on a run; whether anything changed."""
    changed = False
    for name, value in fields.items():
        if getattr(run, name) != value:
            setattr(run, name, value)
            changed = True
    return changed


def follow(manifest: Manifest, interval_s: float, notify: Notify | None = None) -> None:
    """Poll until every run has ended."""
    while not poll(manifest, notify):
        time.sleep(interval_s)


def cancel_open(manifest: Manifest, why: str) -> None:
    """scancel every submission with runs still open; mark those runs failed with `why`."""
    for sub in slurm_record(manifest).submissions:
        if any(manifest.run(r).state in OPEN for r in sub.runs):
            commands.scancel(sub.job_id)
    for r in manifest.runs:
        if r.state in OPEN:
            r.state, r.finished_at, r.error = "failed", utc_now(), why
    manifest.save()
