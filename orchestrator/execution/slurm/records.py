"""What one array task tells the orchestrator: a record it leaves in
slurm/tasks/<run id>.json (the task never writes the manifest; the orchestrator
folds these in as it follows the array)."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, ValidationError

from llenergymeasure.backends.atomic import write_json_atomic
from llenergymeasure.orchestrator.execution.layout import StudyLayout


class TaskRecord(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str
    job_id: str | None = None  # the array's job id
    array_task_id: str | None = None
    task_job_id: str | None = None  # this task's own job id
    node: str
    gpu_uuids: list[str] = []
    started_at: str
    state: str | None = None  # done | failed, once the run ended
    exit_code: int | None = None
    error: str | None = None
    finished_at: str | None = None

    def write(self, study_dir: Path) -> None:
        write_json_atomic(StudyLayout(study_dir).task_record(self.run_id), self.model_dump(mode="json"))


def read_task_record(study_dir: Path, run_id: str) -> TaskRecord | None:
    """The task's record, or None when it left none (never started, or its node lost it)."""
    try:
        return TaskRecord.model_validate_json(StudyLayout(study_dir).task_record(run_id).read_bytes())
    except (OSError, ValidationError):
        return None
