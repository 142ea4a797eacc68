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


@dataclass(frozen=True)
class StudyLayout:
    root: Path

    # -- the study's own files
    @property
    def manifest(self) -> Path:
        return self.root / "manifest.json"

    @property
    def lock(self) -> Path:
        return self.root / ".llem.lock"

    def study_file(self, name: str) -> Path:
        return self.root / name

    # -- runs
    @property
    def runs(self) -> Path:
        return self.root / "runs"

    def run_dir(self, run_id: str) -> Path:
        return self.runs / run_id

    @staticmethod
    def run_dir_entry(run_id: str) -> str:
        """The run directory as the manifest records it (relative to the study)."""
        return f"runs/{run_id}"

    def attempts(self, run_id: str) -> Path:
        return self.root / "attempts" / run_id

    # -- tables and report
    @property
    def runs_table(self) -> Path:
        return self.root / "runs.parquet"

    @property
    def summary(self) -> Path:
        return self.root / "summary.parquet"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    # -- publication
    @property
    def study_lock(self) -> Path:
        return self.root / "study.lock.yaml"

    @property
    def environment(self) -> Path:
        return self.root / "environment.json"

    @property
    def reproduce_md(self) -> Path:
        return self.root / "REPRODUCE.md"

    @property
    def reproduction(self) -> Path:
        return self.root / "reproduction.parquet"

    # -- Slurm
    @property
    def slurm(self) -> Path:
        return self.root / "slurm"

    @property
    def slurm_logs(self) -> Path:
        return self.slurm / "logs"

    @property
    def slurm_tasks(self) -> Path:
        return self.slurm / "tasks"

    def slurm_script(self, submission: int) -> Path:
        return self.slurm / f"array-{submission}.sh"

    def task_record(self, run_id: str) -> Path:
        return self.slurm_tasks / f"{run_id}.json"

    def slurm_attempt(self, submission: int, run_id: str) -> Path:
        """Where a resubmitted run's earlier files go."""
        return self.slurm / "attempts" / f"before-{submission}" / run_id
