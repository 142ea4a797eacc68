"""The user's own llem config (`$LLEM_CONFIG`, else `~/.config/llem/config.yaml`):
defaults a person keeps for every study (prices, Slurm settings); a study file
overrides them field by field."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from llenergymeasure.backends.limits import STRICT
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.analysis_section import Costs
from llenergymeasure.orchestrator.study.messages import format_errors


class UserConfig(BaseModel):
    model_config = STRICT

    costs: Costs = Costs()
    slurm: dict[str, Any] | None = None  # merged under the study's, then validated (orchestrator/execution/slurm/settings.py)


def user_config_path() -> Path:
    if os.environ.get("LLEM_CONFIG"):
        return Path(os.environ["LLEM_CONFIG"])
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "llem" / "config.yaml"


def load_user_config(path: Path | None = None) -> tuple[UserConfig, Path | None]:
    """The user config and where it came from (None when there is no file)."""
    path = path or user_config_path()
    if not path.exists():
        return UserConfig(), None
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise UserError(f"{path}: cannot read the llem user config ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the llem user config must be a mapping (costs: ...)")
    try:
        return UserConfig.model_validate(data), path
    except ValidationError as e:
        raise UserError(f"{path}: invalid user config:\n  " + "\n  ".join(format_errors(e, UserConfig))) from None
