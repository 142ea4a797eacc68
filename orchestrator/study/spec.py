"""What a study is once loaded: its validated experiments and how its runs are scheduled.

`load.py` builds these from a study file; everything after loading (planning,
execution, analysis) reads them and never the YAML again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel, Field, ValidationError, ValidationInfo, ValidatorFunctionWrapHandler, field_validator,
)

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.limits import MAX_COUNT, MAX_GPUS, MAX_SECONDS, MAX_SEED, STRICT
from llenergymeasure.orchestrator.study.analysis_section import Analysis
from llenergymeasure.orchestrator.study.precision import (
    AUTO, AUTO_FIRST_CYCLES, DEFAULT_MAX_CYCLES, DEFAULT_TARGET_CI_PCT,
)
from llenergymeasure.orchestrator.study.size import MAX_CYCLES
from llenergymeasure.orchestrator.study.sweep import show_value

# SIGTERM to SIGKILL when llem stops a run (timeout, watchdog, Ctrl-C): the harness
# needs a moment to write error.json. The one default for every runner.
DEFAULT_STOP_GRACE_S = 10.0


class Execution(BaseModel):
    """How a study's runs are scheduled."""

    model_config = STRICT  # strict types and bounded numbers (backends/limits.py)

    # `auto`: AUTO_FIRST_CYCLES cycles of everything, then one more cycle at a time of only the
    # configurations whose 95% CI is wider than target_ci_pct, up to max_cycles (study/precision.py)
    n_cycles: Annotated[int, Field(ge=1, le=MAX_CYCLES)] | Literal["auto"] = Field(
        3, description="Repetitions of every experiment, or auto: until the intervals are tight.")
    target_ci_pct: float = Field(DEFAULT_TARGET_CI_PCT, gt=0, le=100,
                                 description="n_cycles: auto: the widest 95% CI half-width allowed, % of the mean.")
    max_cycles: int = Field(DEFAULT_MAX_CYCLES, ge=AUTO_FIRST_CYCLES, le=MAX_CYCLES,
                            description="n_cycles: auto: never more cycles of a configuration than this.")
    order: Literal["sequential", "interleaved", "shuffled"] = "interleaved"
    shuffle_seed: int = Field(0, ge=0, le=MAX_SEED)
    gap_between_runs_s: float = Field(0.0, ge=0, le=MAX_SECONDS)
    gap_between_cycles_s: float = Field(0.0, ge=0, le=MAX_SECONDS)
    run_timeout_s: float | None = Field(None, gt=0, le=MAX_SECONDS, description="Kill a run after this long.")
    runner: Literal["local", "docker", "slurm"] | None = Field(None, description="Used when --runner is auto.")
    parallel_gpus: int = Field(1, ge=1, le=MAX_GPUS,
                               description="Runs at once on disjoint GPUs of one host (local runner).")
    # No output and no heartbeat for this long: the run is stuck (orchestrator/execution/watchdog.py).
    # Generous by default: loading a large model or torch.compile can be silent for minutes.
    stall_timeout_s: float | None = Field(1800.0, gt=0, le=MAX_SECONDS, description="Kill a run silent this long.")
    stop_grace_s: float = Field(DEFAULT_STOP_GRACE_S, ge=0, le=MAX_SECONDS,
                                description="SIGTERM to SIGKILL when stopping a run.")
    # After this many failures in a row the study pauses (resume with --resume): a
    # broken machine or image must not burn through a days-long plan. null: never.
    max_consecutive_failures: int | None = Field(5, ge=1, le=MAX_COUNT)
    # publication mode: `true`, or `{energy_required: false}` for throughput/latency-only results
    publication: Publication | None = None

    @field_validator("publication", mode="before")
    @classmethod
    def _publication_flag(cls, v: Any) -> Any:
        if v is True:
            return {}
        return None if v is False else v

    @field_validator("n_cycles", mode="wrap")
    @classmethod
    def _cycles(cls, v: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        """One message for both forms (pydantic would give one per member of the union)."""
        if isinstance(v, bool):  # YAML's yes/no/true/false: never a cycle count
            raise ValueError("must be an integer, not a boolean (or auto)")
        try:
            return handler(v)
        except ValidationError:
            raise ValueError(f"must be an integer from 1 to {MAX_CYCLES}, or auto") from None

    @field_validator("target_ci_pct", "max_cycles")
    @classmethod
    def _only_with_auto(cls, v: Any, info: ValidationInfo) -> Any:
        """Given with a fixed number of cycles these would be silently ignored (a default is
        not validated, so this runs only for a value the file gives)."""
        cycles = info.data.get("n_cycles", AUTO)  # absent: n_cycles itself was invalid, said already
        if cycles != AUTO:
            raise ValueError(f"applies only with n_cycles: auto (n_cycles is {cycles}); "
                             f"set n_cycles: auto or remove {info.field_name}")
        return v

    @property
    def auto(self) -> bool:
        return self.n_cycles == AUTO

    @property
    def first_cycles(self) -> int:
        """Cycles planned before any decision: n_cycles, or AUTO_FIRST_CYCLES with auto."""
        return AUTO_FIRST_CYCLES if self.n_cycles == AUTO else int(self.n_cycles)

    @property
    def most_cycles(self) -> int:
        """The most cycles a configuration can run (sizes run ids and the run-count limits)."""
        return self.max_cycles if self.n_cycles == AUTO else int(self.n_cycles)

    def describe_cycles(self) -> str:
        """`3`, or `auto (3–10 cycles, target ±5 %)`: what the plan printout and the lock say."""
        if not self.auto:
            return str(self.n_cycles)
        return f"auto ({AUTO_FIRST_CYCLES}–{self.max_cycles} cycles, target ±{self.target_ci_pct:g} %)"


class Publication(BaseModel):
    """Refuse to start unless everything the results depend on is pinned (see orchestrator/publication/checks.py)."""

    model_config = STRICT

    energy_required: bool = Field(True, description="false: publish throughput and latency only, no energy columns.")


@dataclass
class Experiment:
    index: int  # 1-based, in expansion order
    config: ExperimentConfig
    swept: dict[str, Any]
    origin: str

    @property
    def id(self) -> str:
        return self.config.config_hash()

    @property
    def label(self) -> str:
        if self.swept:
            return ", ".join(f"{k}={show_value(v)}" for k, v in self.swept.items())
        return self.origin


@dataclass
class Study:
    name: str
    path: Path
    text: str  # the file as given
    is_study: bool
    experiments: list[Experiment]
    execution: Execution
    notes: list[str]
    analysis: Analysis = field(default_factory=Analysis)
    reference_index: int = 1  # the experiment ratios are taken against
    lock: dict[str, Any] | None = None  # what a study.lock.yaml pinned (see orchestrator/publication/lock.py)
    slurm: dict[str, Any] | None = None  # the `slurm:` section as given, validated (study/slurm_section.py)
    # where its relative paths were read from (study/paths.py): a copy of the file elsewhere
    # (the study directory's, on --resume) means the same files only when loaded with this
    base_dir: Path | None = None
