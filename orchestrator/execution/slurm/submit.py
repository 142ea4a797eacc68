"""Submitting runs as an array into a study directory, and following it to the end."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.orchestrator.execution.slurm import commands
from llenergymeasure.orchestrator.execution.slurm.follow import cancel_open, follow, submissions
from llenergymeasure.orchestrator.execution.slurm.script import SLURM_DIR, render
from llenergymeasure.orchestrator.execution.slurm.settings import SlurmSettings
from llenergymeasure.orchestrator.execution.slurm.storage import local_only_problem
from llenergymeasure.orchestrator.execution.slurm.task import TASKS_DIR



def submit(manifest: Manifest, run_ids: list[str], settings: SlurmSettings, notify: Notify) -> str:
    """Write `slurm/array-<n>.sh`, sbatch it once; the array's job id (recorded in the manifest)."""
    study_dir = manifest.study_dir.resolve()
    if settings.shared_storage_check:
        problem = local_only_problem(study_dir, commands.partition_nodes(settings.partition))
        if problem:
            raise UserError(f"-o: {problem}")
    subs = submissions(manifest)
    n = len(subs) + 1
    slurm_dir = study_dir / SLURM_DIR
    (slurm_dir / "logs").mkdir(parents=True, exist_ok=True)
    (slurm_dir / "tasks").mkdir(parents=True, exist_ok=True)
    (study_dir / "runs").mkdir(exist_ok=True)
    script = slurm_dir / f"array-{n}.sh"
    script.write_text(render(settings, study_dir, manifest.data["study_name"], run_ids, n))
    script.chmod(0o755)
    t0 = time.monotonic()
    job_id = commands.sbatch(script, study_dir)
    took = time.monotonic() - t0
    manifest.data["slurm"]["settings"] = settings.model_dump(mode="json")
    subs.append({"job_id": job_id, "script": f"{SLURM_DIR}/{script.name}", "runs": run_ids,
                 "submitted_at": utc_now(), "submit_s": round(took, 3)})
    for i, run_id in enumerate(run_ids):
        run = manifest.run(run_id)
        _set_aside(study_dir, run, n)
        run.update(state="pending", started_at=None, finished_at=None, exit_code=None, error=None,
                   slurm={"job_id": job_id, "array_task_id": i, "state": "PENDING"})
    manifest.save()
    notify(f"submitted {len(run_ids)} run(s) as Slurm array {job_id} ({script.relative_to(study_dir.parent)})")
    return job_id


def _set_aside(study_dir: Path, run: dict[str, Any], submission: int) -> None:
    """A resubmitted run starts from an empty run directory; the earlier attempt's files
    (and its task record) move to slurm/attempts/<submission>/ for the record."""
    old = study_dir / run["run_dir"]
    record = study_dir / TASKS_DIR / f"{run['run_id']}.json"
    keep = study_dir / SLURM_DIR / "attempts" / f"before-{submission}" / run["run_id"]
    if old.exists() and any(old.iterdir()):
        keep.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(old), str(keep))
    if record.exists():
        keep.mkdir(parents=True, exist_ok=True)
        shutil.move(str(record), str(keep / "slurm-task.json"))


def follow_study(manifest: Manifest, interval_s: float, notify: Notify) -> None:
    """Follow to the end; Ctrl-C cancels the open tasks (scancel) and re-raises."""
    try:
        follow(manifest, interval_s, notify)
    except KeyboardInterrupt:
        cancel_open(manifest, "cancelled: interrupted (Ctrl-C); the Slurm array was scancelled")
        raise


def not_done(manifest: Manifest) -> list[str]:
    """Runs to submit again, in the plan's order: every run that is not done."""
    runs = sorted(manifest.data["runs"], key=lambda r: r["position"])
    return [r["run_id"] for r in runs if r["state"] != "done"]


def settings_of(manifest: Manifest) -> SlurmSettings:
    raw: dict[str, Any] = manifest.data.get("slurm", {}).get("settings") or {}
    return SlurmSettings.model_validate(raw)
