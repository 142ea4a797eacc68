"""The `analysis:` section of a study: the reference configuration and, optionally,
prices and carbon intensity for the cost view.

Set in the study file (`analysis:`) or, for prices and intensity, in the user
config (`~/.config/llem/config.yaml`, `costs:`, see user_config.py); the study wins
field by field.
Nothing here is ever defaulted to a number: without a price there is no cost
column, without an intensity no CO2 column.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError, field_validator

from llenergymeasure.backends.limits import MAX_COUNT, STRICT
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.messages import format_errors


DEFAULT_MAX_CV = 0.05


class Costs(BaseModel):
    model_config = STRICT  # strict types, finite numbers (backends/limits.py)

    currency: str = Field("USD", min_length=1, max_length=8, description="Label for the prices below.")
    electricity_price_per_kwh: float | None = Field(None, ge=0)
    gpu_hour_price: float | None = Field(None, ge=0, description="Price of one GPU for one hour.")
    pue: float | None = Field(None, ge=1, description="Data-centre power usage effectiveness (>= 1).")
    grid_carbon_intensity_g_per_kwh: float | None = Field(None, ge=0)

    @property
    def any_set(self) -> bool:
        return any(v is not None for k, v in self if k != "currency")


class Analysis(BaseModel):
    model_config = STRICT

    # 1-based experiment index, an experiment's label, or a mapping of swept values
    # ({pytorch.batch_size: 1}); default: the first experiment.
    reference: Annotated[int, Field(ge=1, le=MAX_COUNT)] | str | dict[str, Any] | None = None
    costs: Costs = Costs()
    # a configuration whose throughput or energy per token varies across its cycles by more
    # than this coefficient of variation (std / mean) is flagged high_variance: noise is
    # caught, not published. 0.05 = 5 %.
    max_cv: float = Field(DEFAULT_MAX_CV, gt=0, le=10)

    @field_validator("reference", mode="before")
    @classmethod
    def _reference_kind(cls, v: Any) -> Any:
        """One message instead of one per union member (and `true` is not experiment 1)."""
        if isinstance(v, int) and not isinstance(v, bool) and not 1 <= v <= MAX_COUNT:
            raise ValueError(f"an experiment index must be an integer from 1 to {MAX_COUNT}")
        if v is None or isinstance(v, (int, str, dict)) and not isinstance(v, bool):
            return v
        raise ValueError("must be an experiment index (1, 2, ...), an experiment's label, "
                         "or a mapping of swept settings ({pytorch.batch_size: 1})")


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
