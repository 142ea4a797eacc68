"""The `slurm:` section as the Slurm runner uses it: the user config's section with the
study's over it, field by field. The model and its checks live with the study
(orchestrator/study/slurm_section.py), which checks a study's own section at load."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.messages import format_errors
from llenergymeasure.orchestrator.study.slurm_section import SlurmSettings

__all__ = ["SlurmSettings", "resolve_settings"]


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
