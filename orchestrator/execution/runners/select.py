"""`--runner auto`: Docker when an engine is reachable and every backend's image
exists or can be built from a local base; otherwise the local runner. Says why."""

from __future__ import annotations

from typing import Any

from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.build.images import base_for, build_command, find_image, image_tag, spec_for
from llenergymeasure.orchestrator.execution.runners.base import Notify, Runner, get_runner


def _missing_images(client: Any, backends: set[str]) -> list[str]:
    missing = []
    for backend in sorted(backends):
        spec = spec_for(backend)
        base = base_for(spec)
        if find_image(client, image_tag(spec, base, client)) is None and find_image(client, base) is None:
            missing.append(f"image for '{backend}' is not built (`{build_command(spec, base)}`)")
    return missing


def select_runner(name: str, study: Any, notify: Notify) -> Runner:
    if name == "auto" and getattr(study.execution, "runner", None):
        name = study.execution.runner  # the study's choice
    if name != "auto":
        return get_runner(name)
    try:
        docker = get_runner("docker")
    except UserError:
        notify("runner: local (no Docker engine is reachable)")
        return get_runner("local")
    missing = _missing_images(docker.client, {e.config.backend for e in study.experiments})
    if missing:
        notify(f"runner: local (Docker engine reachable, but {'; '.join(missing)})")
        return get_runner("local")
    notify("runner: docker (engine reachable; images present or buildable from a local base)")
    return docker
