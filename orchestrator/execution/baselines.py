"""Unloaded idle baselines shared across a study's runs (measurement.baseline_reuse_s):
the latest one measured under each energy-source setting is offered to the next runs
with that setting, which reuse it only if it is fresh enough and was measured by the
same source on the same devices (the harness decides and records it,
harness/baseline.py). Loaded baselines belong to one configuration: never offered."""

from __future__ import annotations

from typing import Any

from llenergymeasure.backends import contract
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness.result import Baseline
from llenergymeasure.orchestrator.execution.outcome import RunOutcome


def _source_setting(config: dict[str, Any]) -> str:
    """measurement.energy_source of a result's config (its JSON omits nothing but nulls)."""
    return str((config.get("measurement") or {}).get("energy_source", "auto"))


class BaselineCache:
    def __init__(self) -> None:
        self.latest: dict[str, Baseline] = {}  # measurement.energy_source -> the latest measured

    def remember(self, outcome: RunOutcome) -> None:
        b = outcome.result.baseline if outcome.result else None
        if outcome.result is not None and b is not None and b.power_w is not None and not b.reused:
            self.latest[_source_setting(outcome.result.config)] = b

    def env_for(self, config: ExperimentConfig) -> dict[str, str]:
        b = self.latest.get(config.measurement.energy_source)
        if b is None or config.measurement.baseline_reuse_s <= 0:
            return {}
        return {contract.ENV_BASELINE: b.model_dump_json()}
