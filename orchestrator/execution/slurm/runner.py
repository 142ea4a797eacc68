"""Slurm runner: the whole plan goes out as one job array (one task per run).

Each task runs `python -m llenergymeasure.orchestrator.execution.slurm.task STUDY_DIR
RUN_ID` on its node, which executes exactly one run with the usual contract into the
shared study directory. This side writes the batch script into the study directory,
submits it once, and follows the array, updating the manifest as tasks start and end.
"""

from __future__ import annotations

from collections.abc import Mapping

from llenergymeasure.backends.devices import resolve_device
from llenergymeasure.orchestrator.errors import NothingStarted, UserError
from llenergymeasure.orchestrator.execution.manifest import Manifest
from llenergymeasure.orchestrator.execution.recording import LoopResult, Policy
from llenergymeasure.orchestrator.execution.runners.base import PlanRunner
from llenergymeasure.orchestrator.execution.slurm import commands
from llenergymeasure.orchestrator.execution.slurm.follow import poll, slurm_record
from llenergymeasure.orchestrator.execution.slurm.settings import SlurmSettings, resolve_settings
from llenergymeasure.orchestrator.execution.slurm.submit import follow_study, submit
from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.study.preflight import Placement
from llenergymeasure.orchestrator.study.spec import Study
from llenergymeasure.orchestrator.study.user_config import load_user_config


def refuse_auto_cycles(study: Study) -> None:
    """n_cycles: auto decides each added cycle from the finished runs of the one before, so it
    needs an llem following the study between cycles; a Slurm array is submitted whole and may
    run detached (`llem collect` finishes it), with nobody there to decide. Exit 2, before
    anything is submitted."""
    if study.execution.auto:
        raise UserError(f"{study.path}: execution.n_cycles: auto is not supported with the slurm runner: it adds "
                        "cycles one at a time from the finished runs of the last, while a Slurm study is "
                        "submitted as one job array; set n_cycles to a number (e.g. n_cycles: "
                        f"{study.execution.max_cycles}), or run it with --runner local or docker")


class SlurmRunner(PlanRunner):
    name = "slurm"
    can_detach = True  # the array runs on without us; `llem status` / `llem collect` follow it

    def __init__(self) -> None:
        commands.require_tools("sbatch", "scontrol", "scancel", "sinfo")
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

    def prepare(self, study: Study, notify: Notify, build: bool = True) -> None:
        refuse_auto_cycles(study)
        user, _ = load_user_config()
        self.settings = resolve_settings(study.slurm, user.slurm, study.path)
        if self.settings.partition and not commands.partition_nodes(self.settings.partition):
            known = ", ".join(sorted(set(commands.partition_names()))) or "none"
            raise UserError(f"{study.path}: slurm.partition: '{self.settings.partition}' is not a partition "
                            f"of this cluster; use one of: {known}")

    def lock_keys(self, study: Study, placements: Mapping[int, Placement]) -> list[str]:
        """None: runs measure on the nodes, whose GPUs Slurm owns."""
        return []

    def run_whole(self, manifest: Manifest, run_ids: list[str], notify: Notify, policy: Policy | None = None,
                  detach: bool = False) -> LoopResult | None:
        """Submit `run_ids` (in this order) as one array and, unless `detach`, follow it to the
        end. The array is submitted whole, so `policy` (--fail-fast, max_consecutive_failures)
        does not apply: Slurm runs the tasks independently."""
        if policy is not None and policy.fail_fast:
            notify("--fail-fast does not apply to the Slurm runner: the array's tasks run independently")
        if slurm_record(manifest).submissions and not poll(manifest):
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
        return LoopResult(failed=[r for r in run_ids if manifest.run(r).state == "failed"])
