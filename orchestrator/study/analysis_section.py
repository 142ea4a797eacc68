"""How a study's results are analysed: the reference configuration and, optionally,
prices and carbon intensity for the cost view.

Set in the study file (`analysis:`) or, for prices and intensity, in the user
config (`~/.config/llem/config.yaml`, `costs:`); the study wins field by field.
Nothing here is ever defaulted to a number: without a price there is no cost
column, without an intensity no CO2 column.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.messages import format_errors


class Costs(BaseModel):
    model_config = ConfigDict(extra="forbid")

    currency: str = Field("USD", min_length=1, max_length=8, description="Label for the prices below.")
    electricity_price_per_kwh: float | None = Field(None, ge=0)
    gpu_hour_price: float | None = Field(None, ge=0, description="Price of one GPU for one hour.")
    pue: float | None = Field(None, ge=1, description="Data-centre power usage effectiveness (>= 1).")
    grid_carbon_intensity_g_per_kwh: float | None = Field(None, ge=0)

    @property
    def any_set(self) -> bool:
        return any(v is not None for k, v in self if k != "currency")


class Analysis(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # 1-based experiment index, an experiment's label, or a mapping of swept values
    # ({pytorch.batch_size: 1}); default: the first experiment.
    reference: int | str | dict[str, Any] | None = None
    costs: Costs = Costs()


class UserConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    costs: Costs = Costs()
    slurm: dict[str, Any] | None = None  # validated with the study's (orchestrator/execution/slurm/settings.py)


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


def parse_analysis(raw: Any, source: Path) -> Analysis:
    if raw is None:
        return Analysis()
    if not isinstance(raw, dict):
        raise UserError(f"{source}: analysis: must be a mapping (reference, costs)")
    try:
        return Analysis.model_validate(raw)
    except ValidationError as e:
        raise UserError(
            f"{source}: invalid configuration:\n  " + "\n  ".join(format_errors(e, Analysis, prefix="analysis."))
        ) from None


def merged_costs(study: Costs, user: Costs, user_path: Path | None) -> tuple[Costs, dict[str, str]]:
    """Study values over user values, field by field, with where each came from."""
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    for name in Costs.model_fields:
        s, u = getattr(study, name), getattr(user, name)
        if name in study.model_fields_set:
            values[name], sources[name] = s, "study file"
        elif name in user.model_fields_set:
            values[name], sources[name] = u, f"user config {user_path}"
    return Costs.model_validate(values), sources
