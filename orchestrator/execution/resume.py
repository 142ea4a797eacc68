"""`llem run --resume DIR`: continue a study where it stopped.

- The directory must be a study (a readable manifest.json) that no other llem is
  working on (the study lock, orchestrator/execution/locks.py).
- The study file (the copy in DIR, or the FILE given) must still expand to the same
  plan: the same experiments (by configuration hash) and the same runs (cycles,
  order, seed; with n_cycles: auto, the same target_ci_pct and max_cycles, and the
  cycles it added so far are kept, further ones decided from the finished runs on
  disk). Anything else is explained and refused: results of two plans would be
  mixed. Settings that don't change the plan (timeouts, gaps, failure limits) may
  change and are taken from the file.
- What the manifest says is checked against the disk first: a run left `running`
  by an orchestrator that died is interrupted (or done, if its result.json is
  complete and valid); a done run whose result.json no longer validates is damaged
  and runs again. Finished, valid results are never touched.
- Then pending, skipped and interrupted runs run again, failed ones only with
  --retry-failed; a run's earlier files move to attempts/<run id>/<n>/ first.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import psutil

from llenergymeasure.backends import contract
from llenergymeasure.orchestrator.execution import failures
from llenergymeasure.orchestrator.execution.outcome import load_result
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.manifest import Manifest, open_study_manifest
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.backends.processes import run_dir_of
from llenergymeasure.orchestrator.study.plan import PlannedRun
from llenergymeasure.orchestrator.study.spec import Execution, Study



# settings that decide which runs a study has: a resumed study must keep them
PLAN_KEYS = ("n_cycles", "order", "shuffle_seed", "target_ci_pct", "max_cycles")


def open_study_dir(path: Path) -> Manifest:
    """The study's manifest, or UserError saying why DIR is not a resumable study."""
    return open_study_manifest(path, "--resume")


def study_file_of(manifest: Manifest) -> Path:
    path = manifest.layout.study_file(manifest.study_file)
    if not path.is_file():
        raise UserError(f"--resume: {path}: the study file copy is missing; pass the study file: "
                        f"llem run FILE --resume {manifest.study_dir}")
    return path


def plan_differences(manifest: Manifest, study: Study, plan: list[PlannedRun]) -> list[str]:
    """What differs between the study's plan and what the file expands to now."""
    diffs = []
    ex_old, ex_new = manifest.execution, study.execution.model_dump(mode="json")
    for key in PLAN_KEYS:
        default = Execution.model_fields[key].default  # a study from before the setting existed had it
        if ex_old.get(key, default) != ex_new.get(key):
            diffs.append(f"execution.{key}: {ex_old.get(key, default)!r} in the study, {ex_new.get(key)!r} now")
    old = [(e.id, e.label) for e in manifest.experiments]
    new = [(e.id, e.label) for e in study.experiments]
    old_ids, new_ids = {i for i, _ in old}, {i for i, _ in new}
    for i, (eid, label) in enumerate(old, 1):
        if eid not in new_ids:
            diffs.append(f"experiment {i} ({label}, {eid[:12]}) is no longer in the file "
                         "(or a setting of it changed)")
    for i, (eid, label) in enumerate(new, 1):
        if eid not in old_ids:
            diffs.append(f"the file now has experiment {label} ({eid[:12]}), which the study does not")
    if not diffs and [i for i, _ in old] != [i for i, _ in new]:
        diffs.append("the experiments are the same but in a different order")
    if not diffs:
        diffs += _run_differences(manifest, study, plan)
    return diffs


def _run_differences(manifest: Manifest, study: Study, plan: list[PlannedRun]) -> list[str]:
    """The manifest's runs against the plan; with n_cycles: auto, the runs it starts with,
    and any it added since within max_cycles (the decisions are the study's own)."""
    planned = manifest.planned()
    if not study.execution.auto:
        return [] if planned == plan else ["the run order differs"]
    diffs = [] if planned[:len(plan)] == plan else ["the run order of the first cycles differs"]
    beyond = [r.run_id for r in planned[len(plan):]
              if not study.execution.first_cycles < r.cycle <= study.execution.max_cycles]
    if beyond:
        diffs.append(f"run(s) {', '.join(beyond[:5])} are not cycles n_cycles: auto could have added")
    return diffs


def check_plan(manifest: Manifest, study: Study, plan: list[PlannedRun]) -> None:
    diffs = plan_differences(manifest, study, plan)
    if diffs:
        raise UserError(
            f"--resume: {study.path} no longer expands to the plan of {manifest.study_dir}:\n  - "
            + "\n  - ".join(diffs)
            + "\nResuming would mix two plans in one study. Resume with the study file as it was "
            "(the copy in the study directory is used when no FILE is given), or start a new study."
        )


def reconcile(manifest: Manifest) -> list[str]:
    """Make the manifest agree with the disk before anything runs; returns notes."""
    notes = []
    for run in manifest.runs:
        exp_id = manifest.experiment(run.experiment_index).id
        result = load_result(manifest.run_dir(run.run_id))
        valid = result is not None and result.experiment_id == exp_id
        if run.state == "running" and valid:
            run.state, run.error, run.failure_kind = "done", None, None
            run.finished_at = run.finished_at or result.finished_at
            notes.append(f"{run.run_id}: finished just before the study stopped; its result is valid and kept")
        elif run.state == "running":
            reason = "interrupted: the orchestrator stopped while this run was going (killed, crashed or rebooted)"
            run.state, run.finished_at, run.error, run.failure_kind = "failed", utc_now(), reason, failures.INTERRUPTED
            notes.append(f"{run.run_id}: {reason}")
        elif run.state == "done" and not valid:
            reason = f"{contract.RESULT_FILE} no longer validates (damaged or removed after the run finished)"
            run.state, run.error, run.failure_kind = "failed", reason, failures.RESULT_DAMAGED
            notes.append(f"{run.run_id}: {reason}; it runs again")
    manifest.save()
    return notes


def to_rerun(manifest: Manifest, retry_failed: bool) -> tuple[list[str], list[str]]:
    """(run ids to run again in plan order, failed run ids left as they are)."""
    again, kept = [], []
    for run in manifest.in_order():
        if run.state in ("pending", "skipped", "running"):
            again.append(run.run_id)
        elif run.state == "failed":
            if retry_failed or run.failure_kind in failures.RETRY_BY_DEFAULT:
                again.append(run.run_id)
            else:
                kept.append(run.run_id)
    return again, kept


def fresh_run_dir(manifest: Manifest, run_id: str) -> None:
    """Before a run runs again: its last try goes into `attempts` (manifest) and its
    files to attempts/<run id>/<n>/, so the new try starts from an empty directory
    and nothing of the old one is lost."""
    run = manifest.run(run_id)
    run_dir = manifest.run_dir(run_id)
    has_files = run_dir.is_dir() and any(run_dir.iterdir())
    if run.state == "pending" and not has_files:
        return
    archive = None
    if has_files:
        root = manifest.layout.attempts(run_id)
        root.mkdir(parents=True, exist_ok=True)
        n = 1 + max((int(p.name) for p in root.iterdir() if p.name.isdigit()), default=0)
        os.replace(run_dir, root / str(n))  # one rename: never half-moved
        archive = str((root / str(n)).relative_to(manifest.study_dir))
    manifest.new_attempt(run_id, archive)


def kill_leftovers(study_dir: Path) -> list[int]:
    """Processes of this study's runs still alive (an orchestrator killed before its
    runs could notice): stopped, so they can't measure beside the resumed study."""
    root = str(study_dir.resolve())
    killed = []
    for proc in psutil.process_iter(["pid"]):
        try:
            run_dir = run_dir_of(proc) or ""  # a new interpreter's, or a launcher's child's
        except (psutil.Error, OSError):
            continue
        if run_dir.startswith(root + os.sep) and proc.pid != os.getpid():
            try:
                pgid = os.getpgid(proc.pid)
                if pgid != os.getpgrp():  # runs lead their own group; never signal ours
                    os.killpg(pgid, signal.SIGKILL)
                else:
                    os.kill(proc.pid, signal.SIGKILL)
            except OSError:
                continue
            killed.append(proc.pid)
    return killed

