"""The runner interface and registry."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from backends.config import ExperimentConfig
from orchestrator.collect import RunOutcome
from orchestrator.errors import UserError


class Runner(Protocol):
    name: str

    def describe(self) -> str:
        """One line for the plan: where runs execute."""
        ...

    def execute(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        timeout_s: float | None,
        on_tick: Callable[[float], None] | None = None,
    ) -> RunOutcome:
        """Run one experiment to completion (or timeout); never raises for a failed run."""
        ...


RUNNERS: dict[str, Callable[[], Runner]] = {}


def register_runner(name: str) -> Callable[[Callable[[], Runner]], Callable[[], Runner]]:
    def deco(factory: Callable[[], Runner]) -> Callable[[], Runner]:
        RUNNERS[name] = factory
        return factory

    return deco


def get_runner(name: str) -> Runner:
    if name == "auto":
        # Docker arrives with the Docker runner; until then auto means local.
        name = "local"
    if name not in RUNNERS:
        raise UserError(
            f"--runner: '{name}' is not available in this version; use one of: "
            f"auto, {', '.join(RUNNERS)}"
        )
    return RUNNERS[name]()
