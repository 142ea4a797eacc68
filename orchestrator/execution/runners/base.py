"""What a runner is, declared in types.

Every runner executes runs with the same contract: the experiment as JSON in one
environment variable, files written into the run directory, the exit code as the
outcome. There are two kinds, and a runner is one or the other by its class:

- `Runner`: one run at a time (`execute(job)`); the study loop (loop.py) drives it.
  The local and Docker runners.
- `PlanRunner`: takes the whole plan at once (`run_whole(...)`) and schedules it
  itself: Slurm (one job array) and parallel GPUs (several runs at once).

Both say which device locks a study needs on this host (`lock_keys`), which host
GPUs an experiment's runs use (`gpu_uuids`), get ready for a study (`prepare`), and
let go of what they hold between runs when the study's session ends (`close`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.orchestrator.execution.locks import device_keys
from llenergymeasure.orchestrator.execution.outcome import RunOutcome
from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.study.preflight import Placement
from llenergymeasure.orchestrator.study.spec import DEFAULT_STOP_GRACE_S, Execution, Study

if TYPE_CHECKING:
    from llenergymeasure.orchestrator.execution.manifest import Manifest
    from llenergymeasure.orchestrator.execution.recording import LoopResult, Policy


@dataclass(frozen=True)
class RunJob:
    """One run to execute: the experiment, where its files go, and how long it may take.

    A runner stops the run when `timeout_s` passes or nothing is heard from it for
    `stall_s` (SIGTERM, then SIGKILL after `stop_grace_s`). `extra_env` adds contract
    variables (e.g. a reusable idle baseline). `gpus`: host GPU UUIDs the parallel
    scheduler chose, used instead of the run's `device:` (the run sees them as
    cuda:0..N-1). `on_tick(elapsed_s)` is called while the run goes; raising
    KeyboardInterrupt from it stops the run as Ctrl-C would."""

    config: ExperimentConfig
    run_dir: Path
    timeout_s: float | None = None
    stall_s: float | None = None
    stop_grace_s: float = DEFAULT_STOP_GRACE_S
    extra_env: Mapping[str, str] = field(default_factory=dict)
    gpus: tuple[str, ...] = ()
    on_tick: Callable[[float], None] | None = None

    @classmethod
    def limited_by(cls, execution: Execution, config: ExperimentConfig, run_dir: Path, **more: object) -> RunJob:
        """A job with the study's own limits (run_timeout_s, stall_timeout_s, stop_grace_s)."""
        return cls(config, run_dir, timeout_s=execution.run_timeout_s, stall_s=execution.stall_timeout_s,
                   stop_grace_s=execution.stop_grace_s, **more)  # type: ignore[arg-type]


class RunnerLost(Exception):
    """The runner's machinery is gone (e.g. the Docker engine became unreachable):
    the study stops, since every later run would fail the same way, and resumes
    once it is back. Not a failure of the run's configuration."""


_R = TypeVar("_R", bound="RunnerBase")


class RunnerBase(ABC):
    """What every runner offers, whichever kind it is."""

    name: str
    # whether `llem run --detach` can return while the runs go on without this process:
    # only a runner that hands the plan to a scheduler (Slurm); the others run it here
    can_detach: bool = False

    @abstractmethod
    def describe(self) -> str:
        """One line for the plan: where runs execute."""

    @abstractmethod
    def resolve_device(self, spec: str) -> str:
        """What `device:` means for runs of this runner (raises ValueError if impossible)."""

    @abstractmethod
    def prepare(self, study: Study, notify: Notify, build: bool = True) -> None:
        """Get ready for this study (images, engines; built only if `build`); raise
        UserError if it can't run."""

    def gpu_uuids(self, config: ExperimentConfig) -> list[str]:
        """Host UUIDs of the GPUs this experiment's runs use ([] without NVML, or when
        runs execute elsewhere)."""
        return []

    def lock_keys(self, study: Study, placements: Mapping[int, Placement]) -> list[str]:
        """The device locks (execution/locks.py) a study must hold on this host while it runs."""
        keys: set[str] = set()
        for e in study.experiments:
            keys.update(device_keys(self.gpu_uuids(e.config), placements[e.index].device))
        return sorted(keys)

    def close(self) -> None:
        """Release what the runner holds between runs (the local runner's launcher); the
        session calls it when its runs are over, however they ended. Idempotent."""

    def __enter__(self: _R) -> _R:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Runner(RunnerBase):
    """Runs one run at a time; the study loop hands it each run in turn."""

    @abstractmethod
    def execute(self, job: RunJob) -> RunOutcome:
        """Run one experiment to completion, or stop it (see RunJob). Never raises for
        a failed run; raises RunnerLost when the runner itself can no longer work."""


class PlanRunner(RunnerBase):
    """Takes the whole plan at once and schedules it itself."""

    @abstractmethod
    def run_whole(self, manifest: Manifest, run_ids: list[str], notify: Notify, policy: Policy | None = None,
                  detach: bool = False) -> LoopResult | None:
        """Run `run_ids` (in this order) and record every outcome in the manifest; the
        loop's result, or None when `detach` returned right after submitting."""
