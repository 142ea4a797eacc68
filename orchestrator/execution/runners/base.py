"""The runner interface and registry."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.orchestrator.execution.outcome import RunOutcome
from llenergymeasure.orchestrator.errors import UserError

if TYPE_CHECKING:
    from llenergymeasure.orchestrator.study.spec import Study



class Runner(Protocol):
    name: str

    def describe(self) -> str:
        """One line for the plan: where runs execute."""
        ...

    def resolve_device(self, spec: str) -> str:
        """What `device:` means for runs of this runner (raises ValueError if impossible)."""
        ...

    def prepare(self, study: Study, notify: Notify, build: bool = True) -> None:
        """Get ready for this study (e.g. images, built only if `build`); raise
        UserError if it can't run."""
        ...

    def execute(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        timeout_s: float | None,
        on_tick: Callable[[float], None] | None = None,
        extra_env: dict[str, str] | None = None,
        stall_s: float | None = None,
        stop_grace_s: float = 10.0,
        gpus: Sequence[str] | None = None,
    ) -> RunOutcome:
        """Run one experiment to completion, or stop it (timeout, no progress for
        `stall_s`: SIGTERM, then SIGKILL after `stop_grace_s`). Never raises for a
        failed run; raises RunnerLost when the runner itself can no longer work.
        `extra_env` adds contract variables (e.g. a reusable idle baseline).
        `gpus`: host GPU UUIDs the run must use instead of its `device:` (the
        parallel scheduler places runs); the run sees them as cuda:0..N-1."""
        ...


class RunnerLost(Exception):
    """The runner's machinery is gone (e.g. the Docker engine became unreachable):
    the study stops, since every later run would fail the same way, and resumes
    once it is back. Not a failure of the run's configuration."""


RUNNERS: dict[str, Callable[[], Runner]] = {}


def register_runner(name: str) -> Callable[[Callable[[], Runner]], Callable[[], Runner]]:
    def deco(factory: Callable[[], Runner]) -> Callable[[], Runner]:
        RUNNERS[name] = factory
        return factory

    return deco


def get_runner(name: str) -> Runner:
    if name not in RUNNERS:
        raise UserError(f"--runner: '{name}' is unknown; use one of: auto, {', '.join(RUNNERS)}")
    return RUNNERS[name]()
