"""Runners execute one run each, always with the same contract: the experiment as
JSON in one environment variable, files written into the run directory, the exit
code as the outcome. `select_runner` picks one (auto: Docker when it can, else local).
"""

from __future__ import annotations

from llenergymeasure.orchestrator.execution.runners import docker as _docker  # noqa: F401  (registers "docker")
from llenergymeasure.orchestrator.execution.runners import local as _local  # noqa: F401  (registers "local")
from llenergymeasure.orchestrator.execution.slurm import runner as _slurm  # noqa: F401  (registers "slurm")
from llenergymeasure.orchestrator.execution.runners.base import RUNNERS, Notify, Runner, RunnerLost, get_runner, register_runner
from llenergymeasure.orchestrator.execution.runners.select import select_runner

__all__ = ["RUNNERS", "Notify", "Runner", "RunnerLost", "get_runner", "register_runner", "select_runner"]
