"""Checks made before any run starts, so that a study never fails halfway through
for a reason that was knowable up front (missing dataset, impossible device...).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.models import BUILTIN_MODELS, ModelNotFound, resolve_model
from llenergymeasure.backends.prompts import DatasetError, dataset_path, read_jsonl_prompts
from llenergymeasure.backends.table import backend_row
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.study.spec import Study


class DeviceResolver(Protocol):
    """What preflight needs of the runner that will execute the study."""

    name: str

    def resolve_device(self, spec: str) -> str:
        """What `device:` means for this runner's runs (raises ValueError if impossible)."""
        ...


@dataclass
class Placement:
    """Where one experiment's runs will execute, or why they cannot here."""

    device: str  # as the run sees it: cpu, cuda:0, ...
    problem: str | None = None  # why this experiment can't run here (dry runs only)


def _check_one(
    cfg: ExperimentConfig, runner: DeviceResolver, notify: Notify,
    models: dict[tuple[str, str | None], str], datasets: dict[str, int],
) -> Placement:
    try:
        device = runner.resolve_device(cfg.device)
    except ValueError as e:
        raise UserError(str(e)) from None
    if backend_row(cfg.backend).gpu_only and device == "cpu":
        raise UserError(
            f"backend: '{cfg.backend}' needs an NVIDIA GPU and this run would be on the CPU "
            f"(no GPU visible to the {runner.name} runner); use backend: pytorch here"
        )
    problem = cfg.backend_section.device_problem(device)
    if problem:
        raise UserError(problem)

    if cfg.lora_adapter and not (Path(cfg.lora_adapter).expanduser() / "adapter_config.json").is_file():
        raise UserError(
            f"lora_adapter: '{cfg.lora_adapter}' is not a PEFT adapter directory (no adapter_config.json)"
        )

    key = (cfg.model, cfg.model_revision)
    if key not in models:
        if cfg.model in BUILTIN_MODELS:
            notify(f"preparing built-in model {cfg.model} (built once, then cached)")
        try:
            models[key] = str(resolve_model(cfg.model, cfg.model_revision))
        except ModelNotFound as e:
            raise UserError(str(e)) from None
    problem = cfg.backend_section.checkpoint_problem(Path(models[key]))
    if problem:
        raise UserError(problem)

    if cfg.dataset not in datasets:
        try:
            path = dataset_path(cfg.dataset)
            datasets[cfg.dataset] = len(read_jsonl_prompts(path)) if path else -1
        except DatasetError as e:
            raise UserError(str(e)) from None
    available = datasets[cfg.dataset]
    if 0 <= available < cfg.n_prompts:
        raise UserError(
            f"n_prompts: {cfg.n_prompts} requested but dataset '{cfg.dataset}' has only "
            f"{available} prompts; lower n_prompts"
        )
    return Placement(device=device)


def check_study(
    study: Study, runner: DeviceResolver, notify: Notify = print, strict: bool = True
) -> dict[int, Placement]:
    """Resolve every experiment's device, model and dataset. Strict (a real run):
    the first problem raises UserError naming the experiment and the fix. Not
    strict (a dry run): problems are returned in `Placement.problem` instead, so
    the plan can still be shown on a machine that can't run it."""
    resolved: dict[int, Placement] = {}
    models: dict[tuple[str, str | None], str] = {}
    datasets: dict[str, int] = {}
    for exp in study.experiments:
        where = f"experiment {exp.index} ({exp.label})" if study.is_study else "experiment"
        try:
            resolved[exp.index] = _check_one(exp.config, runner, notify, models, datasets)
        except UserError as e:
            if strict:
                raise UserError(f"{where}: {e}") from None
            resolved[exp.index] = Placement(device="-", problem=str(e))
    return resolved
