"""Which runner executes a study: `--runner`, else the study's `execution.runner`,
else auto (Docker when an engine is reachable and every backend's image exists or
can be built from a local base; otherwise the local runner; it says why). Then
`execution.parallel_gpus` may wrap a local or Docker runner to run several at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from llenergymeasure.orchestrator.build.images import build_advice, find_image, host_has_gpus, resolve_image
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution.parallel import parallel_runner
from llenergymeasure.orchestrator.execution.runners.base import PlanRunner, Runner
from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.study.spec import Study

if TYPE_CHECKING:
    from llenergymeasure.orchestrator.execution.runners.docker import DockerRunner

AnyRunner = Runner | PlanRunner


def _local() -> AnyRunner:
    from llenergymeasure.orchestrator.execution.runners.local import LocalRunner

    return LocalRunner()


def _docker() -> DockerRunner:
    from llenergymeasure.orchestrator.execution.runners.docker import DockerRunner

    return DockerRunner()


def _slurm() -> AnyRunner:
    from llenergymeasure.orchestrator.execution.slurm.runner import SlurmRunner

    return SlurmRunner()


# name -> factory (each imports only its own runner: the Docker SDK and the Slurm tools
# are looked for only when asked for)
RUNNERS: dict[str, Callable[[], AnyRunner]] = {"local": _local, "docker": _docker, "slurm": _slurm}


def runner_named(name: str) -> AnyRunner:
    if name not in RUNNERS:
        raise UserError(f"--runner: '{name}' is unknown; use one of: auto, {', '.join(RUNNERS)}")
    return RUNNERS[name]()


def _missing_images(client: Any, backends: set[str]) -> list[str]:
    """Backends with no image of the current content here (on whatever base it was built)
    and no base to build one from, each with a build command that works on this machine."""
    gpus = host_has_gpus()
    missing = []
    for backend in sorted(backends):
        r = resolve_image(client, backend, gpus)
        if r.image is None and find_image(client, r.choice.base) is None:
            missing.append(f"image for '{backend}' is not built ({build_advice(client, r.choice, gpus)})")
    return missing


def _auto(study: Study, notify: Notify) -> AnyRunner:
    try:
        docker = _docker()
    except UserError:
        notify("runner: local (no Docker engine is reachable)")
        return _local()
    missing = _missing_images(docker.client, {e.config.backend for e in study.experiments})
    if missing:
        notify(f"runner: local (Docker engine reachable, but {'; '.join(missing)})")
        return _local()
    notify("runner: docker (engine reachable; images present or buildable from a local base)")
    return docker


def choose_runner(name: str, study: Study, notify: Notify) -> AnyRunner:
    """The runner for this study, wrapped for parallel GPUs where that applies."""
    if name == "auto" and study.execution.runner:
        name = study.execution.runner  # the study's choice
    runner = _auto(study, notify) if name == "auto" else runner_named(name)
    return parallel_runner(runner, study, notify)
