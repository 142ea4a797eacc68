"""Runners execute one run each, always with the same contract: the experiment as
JSON in one environment variable, files written into the run directory, the exit
code as the outcome. Pick one with `get_runner(name)`.
"""

from __future__ import annotations

from orchestrator.runners.base import RUNNERS, Runner, get_runner, register_runner
from orchestrator.runners import local as _local  # noqa: F401  (registers "local")

__all__ = ["RUNNERS", "Runner", "get_runner", "register_runner"]
