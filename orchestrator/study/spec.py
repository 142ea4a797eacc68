"""What a study is once loaded: its validated experiments and how its runs are scheduled.

`load.py` builds these from a study file; everything after loading (planning,
execution, analysis) reads them and never the YAML again.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.limits import MAX_COUNT, MAX_GPUS, MAX_SECONDS, MAX_SEED, STRICT
from llenergymeasure.orchestrator.study.analysis_section import Analysis
from llenergymeasure.orchestrator.study.size import MAX_CYCLES
from llenergymeasure.orchestrator.study.sweep import show_value

# SIGTERM to SIGKILL when llem stops a run (timeout, watchdog, Ctrl-C): the harness
# needs a moment to write error.json. The one default for every runner.
DEFAULT_STOP_GRACE_S = 10.0


class Execution(BaseModel):
    """How a study's runs are scheduled."""

    model_config = STRICT  # strict types and bounded numbers (backends/limits.py)

    n_cycles: int = Field(3, ge=1, le=MAX_CYCLES, description="Repetitions of every experiment.")
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
