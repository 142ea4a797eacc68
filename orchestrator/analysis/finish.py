"""The end of every study, whichever runner ran it: `runs.parquet`, `summary.parquet`
and `report.html`, recomputed from the run directories. `llem run` calls it after
its last run, `llem collect` after following a Slurm array to its end.

These files are views of results already safe on disk (the run directories and the
manifest), so none of them failing loses anything: each failure is said, with the
command that writes the file again, and `Finished.unwritten` names the files that are
missing, so that the caller can end unsuccessfully (`llem run` exits 1) instead of
reporting a study whose tables and report do not exist.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from llenergymeasure.orchestrator.analysis.results import StudyResults, open_study
from llenergymeasure.orchestrator.analysis.summary import write_summary
from llenergymeasure.orchestrator.analysis.tables import write_runs_table
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.notify import Notify


@dataclass
class Finished:
    results: StudyResults
    report: Path | None  # None when it could not be written (said through notify)
    unwritten: list[str] = field(default_factory=list)  # files of the study that could not be written

    def redo_hint(self) -> str:
        """What writes the unwritten files again, once the cause (e.g. a full disk) is fixed."""
        d = self.results.study_dir
        return (f"could not write {', '.join(self.unwritten)} in {d}; the runs' results are intact. "
                f"Once fixed: `llem run --resume {d}` writes them all again (finished runs are not re-run), "
                f"`llem report {d}` writes the report, `llem results {d}` shows the summary")


def save_runs_table(manifest: Manifest, notify: Notify) -> bool:
    """runs.parquet as the manifest stands (also after an interrupted or stopped session);
    False when it could not be written (said through notify)."""
    try:
        write_runs_table(manifest)
        return True
    except OSError as e:  # disk full: the manifest is the record; runs.parquet is rebuilt on resume
        notify(f"runs.parquet not updated ({e.strerror or e}); it is rebuilt when the study resumes")
        return False


def _save_summary(results: StudyResults, notify: Notify) -> bool:
    try:
        write_summary(results.summary, results.study_dir)
        return True
    except OSError as e:  # disk full: the run directories are the record; `llem results` recomputes it
        notify(f"summary.parquet not written ({e.strerror or e}); `llem results {results.study_dir}` recomputes it")
        return False


def _save_report(results: StudyResults, notify: Notify) -> Path | None:
    from llenergymeasure.orchestrator.analysis.report import write_report  # matplotlib: only when writing one

    try:
        return write_report(results)
    except Exception as e:  # noqa: BLE001 - a view of results already safe on disk
        notify(f"warning: the HTML report could not be written ({type(e).__name__}: {e}); "
               f"results are intact; retry with `llem report {results.study_dir}`")
        return None


def finish_study(manifest: Manifest, notify: Notify) -> Finished:
    """runs.parquet, summary.parquet and report.html; what could not be written is in `unwritten`."""
    layout = manifest.layout
    unwritten = [] if save_runs_table(manifest, notify) else [layout.runs_table.name]
    results = open_study(manifest.study_dir)
    if not _save_summary(results, notify):
        unwritten.append(layout.summary.name)
    report = _save_report(results, notify)
    if report is None:
        unwritten.append(layout.report.name)
    return Finished(results, report, unwritten)
