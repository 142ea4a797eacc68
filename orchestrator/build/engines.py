"""TensorRT-LLM engines for a study: which cached engine each TensorRT experiment
needs, built once before any measured run (by the runner, in its own container or
process) and held with a shared lock while a run uses it.

Experiments that differ only in runtime settings (KV free-memory fraction,
sampling, prompts) share one engine.
"""

from __future__ import annotations

import re
import time
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.orchestrator.study.spec import Experiment
from llenergymeasure.backends.harness.energy import UnavailableMeter, measured, select_gpu_meter
from llenergymeasure.backends.harness.gpu import discover_nvml
from llenergymeasure.orchestrator.build import engine_keys as keys
from llenergymeasure.orchestrator.build import engine_store as store
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.build.images import base_for, spec_for

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_RELEASE = re.compile(r"tensorrt-llm/release:([0-9][\w.]*)")



class GpuOwner(Protocol):
    """What keys an engine to a GPU: the runner that will run the experiment."""

    def gpu_uuids(self, config: ExperimentConfig) -> list[str]:
        """Host UUIDs of the GPUs this experiment's runs use."""
        ...


class EngineHost(GpuOwner, Protocol):
    """What a runner provides so that engines can also be built on its GPUs."""

    def build_engine(self, config: ExperimentConfig, out_dir: Path) -> None:
        """Run `python -m llenergymeasure.backends.tensorrt build` (in a container or a process) so
        that the engine's files land in out_dir; raise on failure."""
        ...


def gpu_for(host: GpuOwner, config: ExperimentConfig) -> dict[str, Any]:
    uuids = host.gpu_uuids(config)
    return keys.gpu_identity(uuid=uuids[0]) if uuids else keys.gpu_identity(index=0)


def trtllm_version() -> str:
    """The TensorRT-LLM version of the TensorRT image's base (its release tag)."""
    base = base_for(spec_for("tensorrt"))
    m = _RELEASE.search(base)
    return m.group(1) if m else f"unknown ({base})"


def revision_for(config: ExperimentConfig) -> str:
    """A pinned commit is the revision as given; otherwise what the cache holds."""
    if config.model_revision and _COMMIT.match(config.model_revision):
        return config.model_revision
    return keys.revision_of(config.model)


def material_for(config: ExperimentConfig, gpu: dict[str, Any]) -> dict[str, Any]:
    return keys.key_material(config, revision_for(config), trtllm_version(), gpu)


@dataclass
class EnginePlan:
    key: str | None
    cached: bool
    problem: str | None = None

    def describe(self) -> str:
        if self.key is None:
            return f"unknown: {self.problem}"
        return f"{self.key[:12]} ({'cached' if self.cached else 'to build'})"


def plan_engines(experiments: list[Experiment], host: GpuOwner) -> dict[int, EnginePlan]:
    """Engine key and cache state per TensorRT experiment (nothing is built)."""
    plans: dict[int, EnginePlan] = {}
    for exp in experiments:
        if exp.config.backend != "tensorrt":
            continue
        try:
            key = keys.engine_key(material_for(exp.config, gpu_for(host, exp.config)))
        except UserError as e:
            plans[exp.index] = EnginePlan(None, False, str(e))
            continue
        entry_ok = (store.engine_dir(key) / store.METADATA).is_file()
        plans[exp.index] = EnginePlan(key, entry_ok)
    return plans


def _builder(config: ExperimentConfig, host: EngineHost) -> store.Builder:
    """Build through the runner; time it, and measure its GPU energy where NVML can
    (reported as a one-off cost beside, never inside, the measured runs)."""

    def build(out_dir: Path) -> dict[str, Any]:
        uuids = host.gpu_uuids(config)
        meter = select_gpu_meter(discover_nvml(uuids)) if uuids else UnavailableMeter("no GPU assigned")
        t0 = time.monotonic()
        with measured(meter) as reading:
            host.build_engine(config, out_dir)
        return {
            "build_seconds": time.monotonic() - t0,
            "energy_j": reading[0].energy_j,
            "energy_unavailable_reason": meter.unavailable_reason,
        }

    return build


def build_engines(
    experiments: list[Experiment], host: EngineHost, notify: Notify
) -> dict[str, dict[str, Any]]:
    """Make sure every engine the study needs is in the cache; returns the key
    material per experiment id, for `hold_engine` at run time."""
    materials: dict[str, dict[str, Any]] = {}
    for exp in experiments:
        if exp.config.backend != "tensorrt":
            continue
        material = material_for(exp.config, gpu_for(host, exp.config))
        key = keys.engine_key(material)
        if not (store.engine_dir(key) / store.METADATA).is_file():
            notify(f"building TensorRT-LLM engine {key[:12]} for experiment {exp.index} (once; not measured)")
        entry = store.ensure_engine(material, _builder(exp.config, host))
        if entry.build_seconds is not None:
            notify(f"engine {key[:12]}: ready (built in {entry.build_seconds:.0f} s)")
        materials[exp.id] = material
    return materials


def hold_engine(
    material: dict[str, Any], config: ExperimentConfig, host: EngineHost
) -> AbstractContextManager[store.EngineEntry]:
    """The engine for one measured run, locked against pruning while it runs
    (rebuilt first if something removed it since the study started)."""
    return store.engine_in_use(material, _builder(config, host))
