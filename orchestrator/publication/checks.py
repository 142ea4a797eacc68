"""Publication mode: refuse to start unless everything the results depend on is
pinned, so that a reader can run the same thing again. Every refusal names the
item and the fix; all of them are reported at once, before anything runs."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.preflight import Placement
from llenergymeasure.orchestrator.execution.runners.base import RunnerBase
from llenergymeasure.orchestrator.study.spec import Study

COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")
MIN_CYCLES = 3
TOOL_ROOT = Path(__file__).resolve().parents[2]


def tool_tree_problems(root: Path = TOOL_ROOT) -> list[str]:
    """Uncommitted or untracked files in the tool's source tree (ignored files don't count)."""
    try:
        out = subprocess.run(["git", "-C", str(root), "status", "--porcelain"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError) as e:
        return [f"tool source: cannot run git in {root} ({e}); run llem from a git clone"]
    if out.returncode != 0:
        return [f"tool source: {root} is not a git checkout, so the code cannot be pinned; "
                "run llem from a git clone of its repository"]
    changed = [line[3:] for line in out.stdout.splitlines() if line.strip()]
    if not changed:
        return []
    shown = ", ".join(changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5 else "")
    return [f"tool source: uncommitted or untracked changes in {root} ({shown}); commit or stash them "
            "so the results point at one commit"]


def _is_hub_id(model: str) -> bool:
    from llenergymeasure.backends.models import BUILTIN_MODELS

    return model not in BUILTIN_MODELS and not Path(model).expanduser().exists()


def model_problems(study: Study) -> list[str]:
    out = []
    for e in study.experiments:
        c = e.config
        if _is_hub_id(c.model) and not (c.model_revision and COMMIT_RE.match(c.model_revision)):
            out.append(f"model: {c.model} (experiment {e.index}) is not pinned; set model_revision to the "
                       "40-character commit hash of the snapshot you mean (see `hf download --revision`)")
    return sorted(set(out))


def _nvml_unavailable() -> str | None:
    try:
        import pynvml

        pynvml.nvmlInit()
        n = pynvml.nvmlDeviceGetCount()
    except Exception as e:  # noqa: BLE001 - any NVML failure means no GPU energy
        return f"NVML is unavailable ({e})"
    return None if n else "NVML sees no GPU"


def energy_problems(study: Study, resolved: dict[int, Placement]) -> list[str]:
    """Whether each experiment's device has an energy sensor this machine can read."""
    from llenergymeasure.backends.harness.energy import select_cpu_meter

    out = set()
    cpu_meter = None
    for e in study.experiments:
        device = resolved[e.index].device
        if device.startswith("cuda"):
            reason = _nvml_unavailable()
            if reason:
                out.add(f"energy: experiment {e.index} runs on {device} but {reason}")
        else:
            cpu_meter = cpu_meter or select_cpu_meter()
            if not cpu_meter.source:
                out.add(f"energy: experiment {e.index} runs on the CPU and {cpu_meter.unavailable_reason}")
    if out:
        out.add("energy: a publication of energy figures needs a sensor; run where one is readable, or publish "
                "throughput and latency only with `execution: {publication: {energy_required: false}}`")
    return sorted(out)


def base_problems(study: Study) -> list[str]:
    """Docker runs: every image's base referenced by digest (checked before anything is built):
    the base of the image a run would use here, else the base a build here would use."""
    from llenergymeasure.orchestrator.build.images import docker_client, host_has_gpus, machine_choice, resolve_image
    from llenergymeasure.orchestrator.errors import UserError

    try:
        client = docker_client(timeout=5)
    except UserError:
        client = None
    gpus = host_has_gpus()
    out = []
    for backend in sorted({e.config.backend for e in study.experiments}):
        r = resolve_image(client, backend, gpus) if client is not None else None
        base = r.base if r is not None and r.image is not None else machine_choice(client, backend, gpus).base
        if "@sha256:" not in base:
            out.append(f"image: the {backend} image's base {base} is referenced by tag only; pin it by digest "
                       f"(name@sha256:...) in images/{backend}/Dockerfile or LLEM_BASE_IMAGE_{backend.upper()}")
    return out


def image_problems(study: Study) -> list[str]:
    """Docker runs: every image present with the current content (its content hash)."""
    from llenergymeasure.orchestrator.build.images import build_advice, docker_client, host_has_gpus, resolve_image

    out = []
    client = docker_client(timeout=5)
    gpus = host_has_gpus()
    for backend in sorted({e.config.backend for e in study.experiments}):
        r = resolve_image(client, backend, gpus)
        if r.image is None:
            out.append(f"image: {r.tag} is not built from the current Dockerfile, lock file and harness "
                       f"(its content hash); build it with {build_advice(client, r.choice, gpus)}")
    return out


def _refuse(problems: list[str]) -> None:
    if problems:
        raise UserError("publication mode: refusing to start:\n  " + "\n  ".join(problems))


def check_pins(study: Study, runner: RunnerBase) -> None:
    """Before anything is resolved or built: the tool's tree, models, cycles, image bases."""
    problems = tool_tree_problems() + model_problems(study)
    if study.execution.first_cycles < MIN_CYCLES:  # n_cycles: auto starts with MIN_CYCLES
        problems.append(f"execution.n_cycles: {study.execution.n_cycles} planned; a publication needs at least "
                        f"{MIN_CYCLES} cycles for confidence intervals; set n_cycles: {MIN_CYCLES} or more")
    if runner.name == "docker":
        problems += base_problems(study)
    _refuse(problems)


def check_energy(study: Study, resolved: dict[int, Placement]) -> None:
    pub = study.execution.publication
    if pub is not None and pub.energy_required:
        _refuse(energy_problems(study, resolved))


def check_images(study: Study, runner: RunnerBase) -> None:
    if runner.name == "docker":  # local runs record package versions and the requirements.lock hash instead
        _refuse(image_problems(study))
