"""Submitting runs as an array into a study directory, and following it to the end."""

from __future__ import annotations

import shutil
import time

from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.manifest import Manifest, SlurmTask, Submission
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.orchestrator.execution.slurm import commands
from llenergymeasure.orchestrator.execution.layout import StudyLayout
from llenergymeasure.orchestrator.execution.slurm.follow import cancel_open, follow, slurm_record
from llenergymeasure.orchestrator.execution.slurm.script import render
from llenergymeasure.orchestrator.execution.slurm.settings import SlurmSettings
from llenergymeasure.orchestrator.execution.slurm.storage import local_only_problem



def submit(manifest: Manifest, run_ids: list[str], settings: SlurmSettings, notify: Notify) -> str:
    """Write `slurm/array-<n>.sh`, sbatch it once; the array's job id (recorded in the manifest)."""
    study_dir = manifest.study_dir.resolve()
    layout = StudyLayout(study_dir)
    if settings.shared_storage_check:
        problem = local_only_problem(study_dir, commands.partition_nodes(settings.partition))
        if problem:
            raise UserError(f"-o: {problem}")
    record = slurm_record(manifest)
    n = len(record.submissions) + 1
    for d in (layout.slurm_logs, layout.slurm_tasks, layout.runs):
        d.mkdir(parents=True, exist_ok=True)
    script = layout.slurm_script(n)
    script.write_text(render(settings, study_dir, manifest.study_name, run_ids, n))
    script.chmod(0o755)
    t0 = time.monotonic()
    job_id = commands.sbatch(script, study_dir)
    record.settings = settings.model_dump(mode="json")
    record.submissions.append(Submission(job_id=job_id, script=str(script.relative_to(study_dir)), runs=run_ids,
                                         submitted_at=utc_now(), submit_s=round(time.monotonic() - t0, 3)))
    for i, run_id in enumerate(run_ids):
        run = manifest.run(run_id)
        _set_aside(layout, run_id, n)
        run.reset()
        run.slurm = SlurmTask(job_id=job_id, array_task_id=i, state="PENDING")
    manifest.save()
    notify(f"submitted {len(run_ids)} run(s) as Slurm array {job_id} ({script.relative_to(study_dir.parent)})")
    return job_id


def _set_aside(layout: StudyLayout, run_id: str, submission: int) -> None:
    """A resubmitted run starts from an empty run directory; the earlier attempt's files
    (and its task record) move to slurm/attempts/before-<submission>/ for the record."""
    old = layout.run_dir(run_id)
    record = layout.task_record(run_id)
    keep = layout.slurm_attempt(submission, run_id)
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
    return [r.run_id for r in manifest.in_order() if r.state != "done"]


def settings_of(manifest: Manifest) -> SlurmSettings:
    return SlurmSettings.model_validate(slurm_record(manifest).settings)
