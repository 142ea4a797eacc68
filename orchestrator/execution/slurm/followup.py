"""`llem status DIR`, `llem collect DIR` and `llem resubmit DIR` for Slurm studies:
follow a detached array later and finish the study directory exactly as waiting would."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.manifest import MANIFEST_FILE, Manifest
from llenergymeasure.orchestrator.analysis.concurrency import concurrency_note
from llenergymeasure.orchestrator.execution.slurm.follow import poll
from llenergymeasure.orchestrator.execution.slurm.submit import follow_study, not_done, settings_of, submit



def open_slurm_study(study_dir: Path) -> Manifest:
    if not (study_dir / MANIFEST_FILE).exists():
        raise UserError(f"{study_dir}: not a study directory (no {MANIFEST_FILE}); give the directory `llem run` printed")
    manifest = Manifest.load(study_dir)
    if manifest.data.get("runner") != "slurm" or not manifest.data.get("slurm", {}).get("submissions"):
        raise UserError(f"{study_dir}: this study was not submitted to Slurm (runner: "
                        f"{manifest.data.get('runner')}); status and collect follow Slurm studies")
    return manifest


@dataclass
class Status:
    manifest: Manifest
    finished: bool

    def lines(self) -> list[str]:
        c = self.manifest.counts()
        jobs = ", ".join(s["job_id"] for s in self.manifest.data["slurm"]["submissions"])
        out = [f"{self.manifest.data['study_name']}: {c['done']} done, {c['failed']} failed, "
               f"{c['running']} running, {c['pending']} pending (Slurm job(s) {jobs})"]
        for r in sorted(self.manifest.data["runs"], key=lambda r: r["position"]):
            s = r.get("slurm") or {}
            where = f"{s.get('job_id')}_{s.get('array_task_id')} {s.get('state', '')} {s.get('node') or ''}".rstrip()
            out.append(f"  {r['run_id']:10} {r['state']:8} {where}" + (f"  {r['error']}" if r.get("error") else ""))
        return out


def status(study_dir: Path) -> Status:
    """One poll of the array(s), saved to the manifest."""
    manifest = open_slurm_study(study_dir)
    return Status(manifest, poll(manifest))


def collect(study_dir: Path, notify: Notify) -> Manifest:
    """Follow until every run has ended, then write runs.parquet, summary.parquet and the report."""
    manifest = open_slurm_study(study_dir)
    follow_study(manifest, settings_of(manifest).poll_interval_s, notify)
    finish(manifest, notify)
    return manifest


def finish(manifest: Manifest, notify: Notify) -> None:
    """The same end as `llem run` after its last run."""
    from llenergymeasure.orchestrator.api import _write_report
    from llenergymeasure.orchestrator.terminal import console, print_summary
    from llenergymeasure.orchestrator.analysis.results import open_study
    from llenergymeasure.orchestrator.analysis.summary import energy_reason, write_summary
    from llenergymeasure.orchestrator.analysis.tables import write_runs_table

    write_runs_table(manifest)
    analysed = open_study(manifest.study_dir)
    write_summary(analysed.summary, manifest.study_dir)
    print_summary(console(), analysed.summary, energy_reason(analysed.runs), reference=analysed.reference_index)
    notify(f"note: {concurrency_note(manifest)}")
    _write_report(analysed, notify)
    c = manifest.counts()
    notify(f"{c['done']} of {len(manifest.data['runs'])} runs done, {c['failed']} failed: {manifest.study_dir}")


def resubmit(study_dir: Path, notify: Notify, detach: bool = False) -> Manifest:
    """Submit again every run that is not done (failed, timed out, cancelled, never started)."""
    manifest = open_slurm_study(study_dir)
    if not poll(manifest):
        raise UserError(f"{study_dir}: runs are still pending or running; wait (`llem collect {study_dir}`) "
                        "or scancel them before resubmitting")
    todo = not_done(manifest)
    if not todo:
        notify("every run is done; nothing to resubmit")
        return manifest
    submit(manifest, todo, settings_of(manifest), notify)
    if not detach:
        follow_study(manifest, settings_of(manifest).poll_interval_s, notify)
        finish(manifest, notify)
    return manifest
