"""Slurm runner: the whole plan goes out as one job array (one task per run).

Each task runs `python -m llenergymeasure.orchestrator.execution.slurm.task STUDY_DIR RUN_ID` on its node,
which executes exactly one run with the usual contract into the shared study
directory. This side writes the batch script into the study directory, submits
it once, and follows the array, updating the manifest as tasks start and end.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.devices import resolve_device
from llenergymeasure.orchestrator.execution.outcome import RunOutcome
from llenergymeasure.orchestrator.errors import NothingStarted, UserError
from llenergymeasure.orchestrator.execution.runners.base import register_runner
from llenergymeasure.orchestrator.execution.slurm.commands import partition_names
from llenergymeasure.orchestrator.execution.slurm.settings import SlurmSettings, resolve_settings
from llenergymeasure.orchestrator.execution.slurm.submit import follow_study, submit



@register_runner("slurm")
class SlurmRunner:
    name = "slurm"
    takes_whole_plan = True  # api.run hands it the plan instead of one run at a time
    remote = True  # runs measure on the nodes: no device locks on this machine

    def __init__(self) -> None:
        from llenergymeasure.orchestrator.execution.slurm.commands import require_tools

        require_tools("sbatch", "scontrol", "scancel", "sinfo")
        self.settings = SlurmSettings()

    def describe(self) -> str:
        s = self.settings
        where = f"partition {s.partition}" if s.partition else "the default partition"
        gpus = f"{s.gpus_per_run} GPU(s)" if s.gpus_per_run else "no GPU"
        throttle = f", at most {s.max_concurrent} at once" if s.max_concurrent else ""
        return (f"slurm runner: one job array on {where}, per run {gpus}, {s.cpus_per_run} CPU(s), "
                f"time limit {s.time_limit}{throttle}; runs execute with the {s.execute} runner")

    def resolve_device(self, spec: str) -> str:
        # the nodes, not this login node, decide what `auto` means: with GPUs requested it is the first of them
        if spec == "auto" and self.settings.gpus_per_run:
            return "cuda:0"
        if spec.startswith("cuda"):
            if not self.settings.gpus_per_run:
                raise ValueError(f"device: '{spec}' needs slurm.gpus_per_run >= 1")
            return spec if ":" in spec else "cuda:0"
        return resolve_device(spec)

    def prepare(self, study: Any, notify: Notify, build: bool = True) -> None:
        from llenergymeasure.orchestrator.study.user_config import load_user_config

        user, _ = load_user_config()
        self.settings = resolve_settings(getattr(study, "slurm", None), user.slurm, study.path)
        from llenergymeasure.orchestrator.execution.slurm.commands import partition_nodes

        if self.settings.partition and not partition_nodes(self.settings.partition):
            known = ", ".join(sorted(set(partition_names()))) or "none"
            raise UserError(f"{study.path}: slurm.partition: '{self.settings.partition}' is not a partition "
                            f"of this cluster; use one of: {known}")

    def execute(self, config: ExperimentConfig, run_dir: Path, timeout_s: float | None,
                on_tick: Callable[[float], None] | None = None,
                extra_env: dict[str, str] | None = None) -> RunOutcome:
        raise UserError("the slurm runner runs a whole plan as a job array, not one run at a time")

    def run_whole(self, manifest: Any, run_ids: list[str], notify: Notify, detach: bool = False,
                  policy: Any = None) -> Any:
        """Submit `run_ids` (in this order) as one array and, unless `detach`, follow it to the
        end: the loop's result (runs failed, why it stopped), or None when detached. The
        array is submitted whole, so `policy` (--fail-fast, max_consecutive_failures) does
        not apply: Slurm runs the tasks independently."""
        from llenergymeasure.orchestrator.execution.loop import LoopResult
        from llenergymeasure.orchestrator.execution.slurm.follow import poll

        if policy is not None and policy.fail_fast:
            notify("--fail-fast does not apply to the Slurm runner: the array's tasks run independently")
        if manifest.data.get("slurm", {}).get("submissions") and not poll(manifest):
            raise UserError(f"{manifest.study_dir}: runs of this study are still queued or running in Slurm; "
                            f"wait for them (`llem collect {manifest.study_dir}`) or scancel them first")
        try:
            submit(manifest, run_ids, self.settings, notify)
        except UserError as e:
            raise NothingStarted(f"{e}\n(nothing was submitted)") from None
        if detach:
            notify(f"detached: follow with `llem status {manifest.study_dir}`, "
                   f"finish with `llem collect {manifest.study_dir}`")
            return None
        follow_study(manifest, self.settings.poll_interval_s, notify)
        return LoopResult(failed=[r for r in run_ids if manifest.run(r)["state"] == "failed"])
