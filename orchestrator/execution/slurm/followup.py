"""Following a Slurm study after `llem run` returned (`--detach`, or a second terminal):
`llem status DIR` (one look), `llem collect DIR` (follow to the end; the entry point
then finishes the study exactly as waiting would) and `llem resubmit DIR`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.manifest import Manifest, open_study_manifest
from llenergymeasure.orchestrator.execution.slurm.follow import poll, slurm_record
from llenergymeasure.orchestrator.execution.slurm.submit import follow_study, not_done, settings_of, submit
from llenergymeasure.orchestrator.notify import Notify


def open_slurm_study(study_dir: Path) -> Manifest:
    manifest = open_study_manifest(study_dir)
    if manifest.runner != "slurm" or not slurm_record(manifest).submissions:
        raise UserError(f"{study_dir}: this study was not submitted to Slurm (runner: "
                        f"{manifest.runner}); status and collect follow Slurm studies")
    return manifest


@dataclass
class Status:
    manifest: Manifest
    finished: bool

    def lines(self) -> list[str]:
        c = self.manifest.counts()
        jobs = ", ".join(s.job_id for s in slurm_record(self.manifest).submissions)
        out = [f"{self.manifest.study_name}: {c['done']} done, {c['failed']} failed, "
               f"{c['running']} running, {c['pending']} pending (Slurm job(s) {jobs})"]
        for r in self.manifest.in_order():
            s = r.slurm
            where = f"{s.job_id}_{s.array_task_id} {s.state or ''} {s.node or ''}".rstrip() if s else ""
            out.append(f"  {r.run_id:10} {r.state:8} {where}" + (f"  {r.error}" if r.error else ""))
        return out


def status(study_dir: Path) -> Status:
    """One poll of the array(s), saved to the manifest."""
    manifest = open_slurm_study(study_dir)
    return Status(manifest, poll(manifest))


def follow_to_end(manifest: Manifest, notify: Notify) -> None:
    """Follow until every run has ended (Ctrl-C cancels the open tasks)."""
    follow_study(manifest, settings_of(manifest).poll_interval_s, notify)


def resubmit(study_dir: Path, notify: Notify) -> tuple[Manifest, bool]:
    """Submit again every run that is not done (failed, timed out, cancelled, never
    started): (the manifest, whether anything was submitted)."""
    manifest = open_slurm_study(study_dir)
    if not poll(manifest):
        raise UserError(f"{study_dir}: runs are still pending or running; wait (`llem collect {study_dir}`) "
                        "or scancel them before resubmitting")
    todo = not_done(manifest)
    if not todo:
        notify("every run is done; nothing to resubmit")
        return manifest, False
    submit(manifest, todo, settings_of(manifest), notify)
    return manifest, True
