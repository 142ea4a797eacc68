"""Idle baselines shared across a study's runs (measurement.baseline_reuse_s): the
latest one measured is offered to the next runs, which reuse it only if it is
fresh enough and from the same devices (the harness decides and records it)."""

from __future__ import annotations

from llenergymeasure.backends import contract
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness.result import Baseline
from llenergymeasure.orchestrator.execution.outcome import RunOutcome


class BaselineCache:
    def __init__(self) -> None:
        self.latest: Baseline | None = None

    def remember(self, outcome: RunOutcome) -> None:
        b = outcome.result.baseline if outcome.result else None
        if b is not None and b.power_w is not None and not b.reused:
            self.latest = b

    def env_for(self, config: ExperimentConfig) -> dict[str, str]:
        if self.latest is None or config.measurement.baseline_reuse_s <= 0:
            return {}
        return {contract.ENV_BASELINE: self.latest.model_dump_json()}
