"""Backend images: content-addressed tags, lookup, and builds through the docker SDK.

An image's content hash covers its Dockerfile, its lock file and every file of
the harness it installs (`backends/`, `datasets/`). The tag adds the base image,
so a CPU build and a CUDA build of the same content never share a tag:

    llem-pytorch:<content hash, 12>-<base hash, 8>

When the harness changes, the expected tag changes and the old image is stale.
The default base is read from the Dockerfile's `ARG BASE_IMAGE=` line (one source
of truth); `LLEM_BASE_IMAGE_<BACKEND>` or `--base` substitutes another.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.backends import __version__
from llenergymeasure.backends.hashing import sha256_file
from llenergymeasure.backends.table import BACKENDS
from llenergymeasure.orchestrator.errors import Failure, UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
LABEL = "org.llenergymeasure"
HASHED_TREES = ("backends", "datasets")


@dataclass(frozen=True)
class ImageSpec:
    """A backend's image: built from images/<backend>/ (a row of the backend table)."""

    backend: str

    @property
    def directory(self) -> Path:
        return REPO_ROOT / "images" / self.backend

    @property
    def dockerfile(self) -> Path:
        return self.directory / "Dockerfile"

    @property
    def lockfile(self) -> Path:
        return self.directory / "requirements.lock"

    @property
    def repository(self) -> str:
        return f"llem-{self.backend}"


IMAGES: dict[str, ImageSpec] = {name: ImageSpec(name) for name in BACKENDS}


def spec_for(backend: str) -> ImageSpec:
    if backend not in IMAGES:
        raise UserError(f"images: unknown backend '{backend}'; choose one of: {', '.join(IMAGES)}")
    return IMAGES[backend]


def default_base(spec: ImageSpec) -> str:
    m = re.search(r"^ARG BASE_IMAGE=(\S+)$", spec.dockerfile.read_text(), re.M)
    if not m:
        raise RuntimeError(f"{spec.dockerfile} has no `ARG BASE_IMAGE=` default")
    return m.group(1)


def base_for(spec: ImageSpec, override: str | None = None) -> str:
    env = os.environ.get(f"LLEM_BASE_IMAGE_{spec.backend.upper()}")
    return override or env or default_base(spec)


def _hashed_files(spec: ImageSpec) -> list[Path]:
    files = [spec.dockerfile, spec.lockfile]
    for tree in HASHED_TREES:
        files += sorted(
            p for p in (REPO_ROOT / tree).rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
        )
    return files


def content_hash(spec: ImageSpec) -> str:
    h = hashlib.sha256()
    for p in _hashed_files(spec):
        h.update(p.relative_to(REPO_ROOT).as_posix().encode() + b"\0")
        h.update(bytes.fromhex(sha256_file(p)))
    return h.hexdigest()


def base_identity(client: Any | None, base: str) -> str:
    """A digest-pinned reference is its own identity; a mutable tag (a local base
    such as llem-base:bookworm-cpu) is identified by the image it points to now,
    so rebuilding the base makes the images built on it stale."""
    if "@sha256:" in base or client is None:
        return base
    image = find_image(client, base)
    return image.id if image is not None else base


def image_tag(spec: ImageSpec, base: str, client: Any | None = None) -> str:
    b = hashlib.sha256(base_identity(client, base).encode()).hexdigest()[:8]
    return f"{spec.repository}:{content_hash(spec)[:12]}-{b}"


def docker_client(timeout: int = 10) -> Any:
    """A connected docker SDK client, or UserError saying how to get an engine."""
    try:
        import docker
    except ImportError:
        raise UserError("the docker Python SDK is not installed: pip install docker") from None
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
        return client
    except Exception as e:  # noqa: BLE001 - every failure means "no engine"
        raise UserError(
            f"no Docker engine is reachable ({type(e).__name__}); start one (e.g. `sudo systemctl "
            "start docker`, or `dockerd &`), check DOCKER_HOST, or use --runner local"
        ) from None


def find_image(client: Any, tag: str) -> Any | None:
    import docker

    try:
        return client.images.get(tag)
    except docker.errors.ImageNotFound:
        return None


def stale_images(client: Any, spec: ImageSpec) -> list[Any]:
    """Images of this backend built from other content."""
    current = content_hash(spec)
    found = client.images.list(filters={"label": f"{LABEL}.backend={spec.backend}"})
    return [i for i in found if i.labels.get(f"{LABEL}.content_hash") != current]


def build_command(spec: ImageSpec, base: str) -> str:
    cmd = f"llem images build {spec.backend}"
    return cmd if base == default_base(spec) else f"{cmd} --base {base}"


class BuildError(Failure):
    """docker build failed; the message carries the failing step's output."""


def build_image(
    client: Any, spec: ImageSpec, base: str, log: Notify = print
) -> Any:
    tag = image_tag(spec, base, client)
    labels = {
        f"{LABEL}.backend": spec.backend,
        f"{LABEL}.harness_version": __version__,
        f"{LABEL}.content_hash": content_hash(spec),
        f"{LABEL}.base_image": base,
        f"{LABEL}.base_identity": base_identity(client, base),
    }
    tail: list[str] = []
    stream = client.api.build(
        path=str(REPO_ROOT),
        dockerfile=str(spec.dockerfile.relative_to(REPO_ROOT)),
        tag=tag,
        buildargs={"BASE_IMAGE": base},
        labels=labels,
        rm=True,
        forcerm=True,
        pull=False,
        decode=True,
    )
    for chunk in stream:
        if "error" in chunk:
            raise BuildError(f"building {tag} failed: {chunk['error'].strip()}\n" + "\n".join(tail[-15:]))
        line = chunk.get("stream", "").rstrip()
        if line:
            tail.append(line)
            if line.startswith("Step "):
                log(line)
    image = client.images.get(tag)
    log(f"built {tag} ({image.id[:19]})")
    return image


def image_status(backends: set[str]) -> dict[str, str]:
    """Backend -> "<expected tag> (present|missing|engine unreachable)", for plans."""
    try:
        client = docker_client(timeout=3)
    except UserError:
        client = None
    out = {}
    for backend in sorted(backends):
        spec = spec_for(backend)
        tag = image_tag(spec, base_for(spec), client)
        if client is None:
            out[backend] = f"{tag} (no Docker engine)"
        else:
            out[backend] = f"{tag} ({'present' if find_image(client, tag) else 'missing'})"
    return out
