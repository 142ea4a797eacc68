"""The `gpu:` section: hardware levers a study can set and sweep like any other setting.

    gpu:
      power_limit_w: 250          # NVML power management limit, watts
      sm_clocks_mhz: [1200, 1500] # locked GPU (SM) clocks: [min, max], or one value for both
      memory_clocks_mhz: 2619     # locked memory clocks, likewise
      persistence_mode: true

They are part of the experiment's configuration (and so of its hash): a power cap
changes what is measured as much as a batch size does. They are *not* applied by the
run: the orchestrator sets them on the run's GPUs on the host before the run starts and
restores the previous values after it (orchestrator/execution/gpu_levers.py), because
changing them needs privileges a run (a container without capabilities) never has. The
run reads back what the driver enforced during its window and warns when it differs
(harness/readback.py).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field, field_validator

from llenergymeasure.backends.limits import STRICT

MAX_POWER_W = 10_000.0  # far above any GPU's board power (an H200 board: 700 W)
MAX_CLOCK_MHZ = 100_000  # far above any GPU clock

Mhz = Annotated[int, Field(ge=1, le=MAX_CLOCK_MHZ)]


def _clock_range(v: int | list[int] | None, field: str) -> list[int] | None:
    """One value locks min and max to it; [min, max] locks the range. Stored as [min, max]
    either way, so that `1500` and `[1500, 1500]` are one configuration (one hash)."""
    if v is None:
        return None
    if isinstance(v, int):
        return [v, v]
    if len(v) not in (1, 2):
        raise ValueError(f"must be one clock in MHz or [min, max] (got {len(v)} values); e.g. {field}: [1200, 1500]")
    lo, hi = v[0], v[-1]
    if lo > hi:
        raise ValueError(f"[min, max] with min above max ({lo} > {hi}); write [{hi}, {lo}]")
    return [lo, hi]


class GpuSettings(BaseModel):
    """Hardware levers set on the run's GPUs for the run (null: left as the GPU has it)."""

    model_config = STRICT

    power_limit_w: float | None = Field(
        None, gt=0, le=MAX_POWER_W,
        description="Power management limit in watts (NVML); within the GPU's own min/max, checked before the study starts.")
    sm_clocks_mhz: Mhz | list[Mhz] | None = Field(
        None, description="Lock the GPU (SM) clocks: one value in MHz, or [min, max].")
    memory_clocks_mhz: Mhz | list[Mhz] | None = Field(
        None, description="Lock the memory clocks: one value in MHz, or [min, max].")
    persistence_mode: bool | None = Field(None, description="Driver persistence mode during the run.")

    @field_validator("sm_clocks_mhz", "memory_clocks_mhz")
    @classmethod
    def _clocks(cls, v: int | list[int] | None, info) -> list[int] | None:  # type: ignore[no-untyped-def]
        return _clock_range(v, info.field_name)

    def is_empty(self) -> bool:
        return all(v is None for v in self.model_dump().values())

    def requested(self) -> dict[str, object]:
        """The settings given, by name (the ones left null are not changed)."""
        return {k: v for k, v in self.model_dump().items() if v is not None}
