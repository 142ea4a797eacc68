"""Every path inside a study directory, named once.

    <study>_<UTC stamp>/
      <study file>            the study file as given
      manifest.json           the plan and every run's state (manifest.py)
      .llem.lock              held while an orchestrator works on the study
      runs/<run id>/          one run directory per run (the run contract's files)
      attempts/<run id>/<n>/  earlier tries of a run, kept
      runs.parquet, summary.parquet, report.html
      study.lock.yaml, environment.json, REPRODUCE.md   publication bundle
      reproduction.parquet    a reproduction's comparison with its original
      slurm/                  Slurm: array-<n>.sh, logs/, tasks/<run id>.json, attempts/
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


def _file(*parts: str) -> property:
    """A path at a fixed place in the study directory."""
    return property(lambda self: self.root.joinpath(*parts), doc="/".join(parts))


@dataclass(frozen=True)
class StudyLayout:
    root: Path

    # the study's own files
    manifest = _file("manifest.json")
    lock = _file(".llem.lock")
    # runs
    runs = _file("runs")
    # tables and report
    runs_table = _file("runs.parquet")
    summary = _file("summary.parquet")
    report = _file("report.html")
    # publication
    study_lock = _file("study.lock.yaml")
    environment = _file("environment.json")
    reproduce_md = _file("REPRODUCE.md")
    reproduction = _file("reproduction.parquet")
    # Slurm
    slurm = _file("slurm")
    slurm_logs = _file("slurm", "logs")
    slurm_tasks = _file("slurm", "tasks")

    def study_file(self, name: str) -> Path:
        return self.root / name

    def run_dir(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    @staticmethod
    def run_dir_entry(run_id: str) -> str:
        """The run directory as the manifest records it (relative to the study)."""
        return f"runs/{run_id}"

    def attempts(self, run_id: str) -> Path:
        return self.root / "attempts" / run_id

    def slurm_script(self, submission: int) -> Path:
        return self.root / "slurm" / f"array-{submission}.sh"

    def task_record(self, run_id: str) -> Path:
        return self.root / "slurm" / "tasks" / f"{run_id}.json"

    def slurm_attempt(self, submission: int, run_id: str) -> Path:
        """Where a resubmitted run's earlier files go."""
        return self.root / "slurm" / "attempts" / f"before-{submission}" / run_id
