"""The end of every study, whichever runner ran it: `runs.parquet`, `summary.parquet`
and `report.html`, recomputed from the run directories. `llem run` calls it after
its last run, `llem collect` after following a Slurm array to its end.

These files are views of results already safe on disk (the run directories and the
manifest), so none of them failing loses anything: it is said, with the command that
writes it again, and the study's outcome stands.
"""

from __future__ import annotations

from dataclasses import dataclass
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


def save_runs_table(manifest: Manifest, notify: Notify) -> None:
    """runs.parquet as the manifest stands (also after an interrupted or stopped session)."""
    try:
        write_runs_table(manifest)
    except OSError as e:  # disk full: the manifest is the record; runs.parquet is rebuilt on resume
        notify(f"runs.parquet not updated ({e.strerror or e}); it is rebuilt when the study resumes")


def _save_summary(results: StudyResults, notify: Notify) -> None:
    try:
        write_summary(results.summary, results.study_dir)
    except OSError as e:  # disk full: the run directories are the record; `llem results` recomputes it
        notify(f"summary.parquet not written ({e.strerror or e}); `llem results {results.study_dir}` recomputes it")


def _save_report(results: StudyResults, notify: Notify) -> Path | None:
    from llenergymeasure.orchestrator.analysis.report import write_report  # matplotlib: only when writing one

    try:
        return write_report(results)
    except Exception as e:  # noqa: BLE001 - a view of results already safe on disk
        notify(f"warning: the HTML report could not be written ({type(e).__name__}: {e}); "
               f"results are intact; retry with `llem report {results.study_dir}`")
        return None


def finish_study(manifest: Manifest, notify: Notify) -> Finished:
    save_runs_table(manifest, notify)
    results = open_study(manifest.study_dir)
    _save_summary(results, notify)
    return Finished(results, _save_report(results, notify))
