"""The `slurm:` section of a study (or of the user config): its settings and their checks.

It lives with the study, not with the Slurm runner, so that a study file is checked
whole when it is loaded, whatever the runner: a misspelt `slurm: {partiton: gpu}`
is an error on a laptop's `--runner local` dry run too, not a surprise on the
cluster. The runner (orchestrator/execution/slurm/settings.py) merges the user
config's section under the study's and validates the result with the same model.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError, field_validator

from llenergymeasure.backends.limits import MAX_COUNT, MAX_GPUS, MAX_SECONDS, STRICT
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.messages import format_errors

# Slurm's own time formats: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S
_TIME = re.compile(r"^\d+(-\d+)?(:\d+){0,2}$")


class SlurmSettings(BaseModel):
    model_config = STRICT  # strict types and bounded numbers (backends/limits.py)

    partition: str | None = None
    account: str | None = None
    qos: str | None = None
    time_limit: str = Field("1:00:00", description="Per run, in Slurm's format (e.g. 30, 1:00:00, 1-00:00:00).")
    gpus_per_run: int = Field(0, ge=0, le=MAX_GPUS)
    gpu_option: Literal["gres", "gpus"] = Field("gres", description="Request GPUs as --gres=gpu:N or --gpus=N.")
    cpus_per_run: int = Field(1, ge=1, le=MAX_GPUS)
    mem_per_run: str | None = Field(None, description="Per run, as sbatch --mem (e.g. 32G).")
    max_concurrent: int | None = Field(None, ge=1, le=MAX_COUNT,
                                       description="Array throttle: at most this many runs at once.")
    extra_sbatch: list[str] = Field(default_factory=list, description="More sbatch options, e.g. ['--constraint=a100'].")
    execute: Literal["local", "docker", "apptainer"] = Field(
        "local", description="How a run executes on the node: the local runner, Docker, or Apptainer/Singularity.")
    python: str | None = Field(None, description="Python on the nodes with llem installed (default: this one).")
    sif: str | None = Field(None, description="Apptainer image (.sif built from the backend image), for execute: apptainer.")
    shared_storage_check: bool = Field(True, description="Refuse a study directory the nodes may not see.")
    poll_interval_s: float = Field(5.0, gt=0, le=MAX_SECONDS, description="How often the array's states are read.")

    @field_validator("time_limit", mode="before")
    @classmethod
    def _time(cls, v: Any) -> Any:
        """Slurm's own format, as a string: YAML reads an unquoted 1:00:00 as 3600 (minutes to Slurm)."""
        if isinstance(v, int) and not isinstance(v, bool):
            raise ValueError(f"must be a string in quotes, e.g. \"1:00:00\" or \"30\" (YAML reads an unquoted "
                             f"H:M:S as a number of seconds: got {v})")
        if isinstance(v, str) and not _TIME.match(v):
            raise ValueError("use Slurm's time format: minutes, M:S, H:M:S or D-H:M:S (e.g. \"1:00:00\")")
        return v

    @field_validator("mem_per_run", mode="before")
    @classmethod
    def _mem(cls, v: Any) -> Any:
        """sbatch's --mem format, so a typo fails here and not in sbatch on the cluster."""
        if isinstance(v, str) and not re.fullmatch(r"\d+[KMGT]?", v):
            raise ValueError("use sbatch's --mem format: a number with K, M, G or T (e.g. 32G)")
        return v  # anything else: a string, or refused by the strict type check


def check_slurm_section(raw: Any, source: Path) -> dict[str, Any] | None:
    """The study's own `slurm:` section, checked on its own (every key known, every value
    valid) and returned as given: the runner merges it over the user config's later."""
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise UserError(f"{source}: slurm: must be a mapping (partition, time_limit, gpus_per_run, ...)")
    try:
        SlurmSettings.model_validate(raw)
    except ValidationError as e:
        raise UserError(f"{source}: invalid configuration:\n  "
                        + "\n  ".join(format_errors(e, SlurmSettings, prefix="slurm."))) from None
    return raw
