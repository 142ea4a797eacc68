"""The `slurm:` section (study file or user config; the study wins field by field)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.messages import format_errors

# Slurm's own time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_TIME = re.compile(r"^\d+(-\d+)?(:\d+){0,2}$")


class SlurmSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit: str = Field("1:00:00", description="Per run, in Slurm's format (e.g. 30, 1:00:00, 1-00:00:00).")
    gpus_per_run: int = Field(0, ge=0)
    gpu_option: Literal["gres", "gpus"] = Field("gres", description="Request GPUs as --gres=gpu:N or --gpus=N.")
    cpus_per_run: int = Field(1, ge=1)
    mem_per_run: str | None = Field(None, description="Per run, as sbatch --mem (e.g. 32G).")
    max_concurrent: int | None = Field(None, ge=1, description="Array throttle: at most this many runs at once.")
    extra_sbatch: list[str] = Field(default_factory=list, description="More sbatch options, e.g. ['--constraint=a100'].")
    execute: Literal["local", "docker", "apptainer"] = Field(
        "local", description="How a run executes on the node: the local runner, Docker, or Apptainer/Singularity.")
    python: str | None = Field(None, description="Python on the nodes with llem installed (default: this one).")
    sif: str | None = Field(None, description="Apptainer image (.sif built from the backend image), for execute: apptainer.")
    shared_storage_check: bool = Field(True, description="Refuse a study directory the nodes may not see.")
    poll_interval_s: float = Field(5.0, gt=0, description="How often the array's states are read.")

    @field_validator("time_limit", mode="before")
    @classmethod
    def _time(cls, v: Any) -> Any:
        v = str(v)
        if not _TIME.match(v):
            raise ValueError("use Slurm's time format: minutes, M:S, H:M:S or D-H:M:S (e.g. 1:00:00)")
        return v

    @field_validator("mem_per_run", mode="before")
    @classmethod
    def _mem(cls, v: Any) -> Any:
        if v is None:
            return v
        v = str(v)
        if not re.fullmatch(r"\d+[KMGT]?", v):
            raise ValueError("use sbatch's --mem format: a number with K, M, G or T (e.g. 32G)")
        return v


def resolve_settings(study_raw: Any, user_raw: Any, source: Path) -> SlurmSettings:
    """Merge the user config's `slurm:` under the study's, then validate; exit 2 on bad input."""
    merged: dict[str, Any] = {}
    for name, raw in (("user config", user_raw), (str(source), study_raw)):
        if raw is None:
            continue
        if not isinstance(raw, dict):
            raise UserError(f"{name}: slurm: must be a mapping (partition, time_limit, gpus_per_run, ...)")
        merged.update(raw)
    try:
        settings = SlurmSettings.model_validate(merged)
    except ValidationError as e:
        raise UserError(f"{source}: invalid configuration:\n  "
                        + "\n  ".join(format_errors(e, SlurmSettings, prefix="slurm."))) from None
    if settings.execute == "apptainer" and not settings.sif:
        raise UserError(f"{source}: slurm.sif: execute: apptainer needs the .sif image path "
                        "(e.g. `apptainer build llem.sif docker-daemon://<image>`)")
    return settings
