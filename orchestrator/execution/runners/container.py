"""What one run's container looks like, as pure functions (unit-testable without an
engine): which host GPUs it gets, its environment and mounts, its labels, and how
leftover containers of a dead orchestrator are recognised."""

from __future__ import annotations

import os
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from llenergymeasure.backends import __version__, contract
from llenergymeasure.backends.atomic import write_bytes_atomic
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness.environment import tool_commit
from llenergymeasure.backends.paths import cache_dir, data_dir
from llenergymeasure.backends.processes import pid_alive
from llenergymeasure.backends.prompts import BUILTIN_DATASETS
from llenergymeasure.orchestrator.build.images import LABEL

RUN_DIR_IN_CONTAINER = "/llem/run"
CACHE_IN_CONTAINER = "/llem/cache"
DATA_IN_CONTAINER = "/llem/data"
HF_HUB_IN_CONTAINER = "/llem/hf-hub"
ENGINE_IN_CONTAINER = "/llem/engine"
ENGINE_BUILD_ENTRYPOINT = ["python3", "-m", "llenergymeasure.backends.tensorrt", "build"]

Volumes = dict[str, dict[str, str]]


@dataclass
class GpuAssignment:
    """What a run's `device:` means on this host."""

    inside: str  # device as the run sees it ("cpu" or "cuda:0")
    host_uuids: list[str] = field(default_factory=list)  # GPUs the container may use


def assign_device(spec: str, host_gpus: list[tuple[int, str, str]], n: int = 1,
                  pinned: Sequence[str] | None = None) -> GpuAssignment:
    """Pin a run to host GPUs by UUID; the container sees them as cuda:0.. (never `--gpus all`).
    `device: cuda:N` with a run spanning `n` GPUs takes GPUs N..N+n-1; `pinned` (the
    parallel scheduler's choice) replaces that for a CUDA run."""
    if spec == "cpu" or (spec == "auto" and not host_gpus and not pinned):
        return GpuAssignment("cpu")
    if pinned:
        return GpuAssignment("cuda:0", list(pinned))
    index = 0 if spec in ("auto", "cuda") else int(spec.split(":")[1])
    if index + n > len(host_gpus):
        seen = f"{len(host_gpus)} GPU(s)" if host_gpus else "no NVIDIA GPU"
        wants = f"{n} GPUs from {spec}" if n > 1 else f"'{spec}'"
        raise ValueError(f"device: {wants} requested but this Docker host has {seen}; use device: auto or cpu")
    return GpuAssignment("cuda:0", [uuid for _, uuid, _ in host_gpus[index:index + n]])


@dataclass(frozen=True)
class ImageInfo:
    id: str
    ref: str  # the content tag
    digests: tuple[str, ...] = ()
    base: str = ""

    @classmethod
    def of(cls, image: Any, ref: str) -> ImageInfo:
        return cls(image.id, ref, tuple(image.attrs.get("RepoDigests") or ()),
                   image.labels.get(f"{LABEL}.base_image", ""))


def _hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home) / "hub"


def _environment(config: ExperimentConfig, image: ImageInfo, assignment: GpuAssignment) -> dict[str, str]:
    env = {
        contract.ENV_EXPERIMENT: config.canonical_json(),
        contract.ENV_RUN_DIR: RUN_DIR_IN_CONTAINER,
        contract.ENV_CACHE_DIR: CACHE_IN_CONTAINER,
        contract.ENV_DATA_DIR: DATA_IN_CONTAINER,
        contract.ENV_DEVICE: assignment.inside,
        contract.ENV_IMAGE_ID: image.id,
        contract.ENV_IMAGE_REF: image.ref,
        contract.ENV_IMAGE_DIGESTS: ",".join(image.digests),
        contract.ENV_IMAGE_BASE: image.base,
        "HOME": "/tmp",
        "HF_HUB_OFFLINE": "1",  # no network in the container: models come from mounts
        "PYTHONUNBUFFERED": "1",
    }
    commit = tool_commit()
    if commit:
        env[contract.ENV_TOOL_COMMIT] = commit
    for secret in contract.SECRET_ENV_VARS:  # passed through, never written
        if os.environ.get(secret):
            env[secret] = os.environ[secret]
    return env


def _read_only(path: Path | str) -> dict[str, str]:
    return {"bind": str(path), "mode": "ro"}


def _volumes(config: ExperimentConfig, run_dir: Path, env: dict[str, str]) -> Volumes:
    """The run directory read-write; everything else the run reads, read-only. Local
    model directories and dataset files keep their host path inside, so the config
    (and its hash) is the same whichever runner executes it."""
    volumes: Volumes = {str(run_dir.resolve()): {"bind": RUN_DIR_IN_CONTAINER, "mode": "rw"}}
    for host, inside in ((cache_dir(), CACHE_IN_CONTAINER), (data_dir(), DATA_IN_CONTAINER)):
        if host.exists():
            volumes[str(host.resolve())] = _read_only(inside)
    model = Path(config.model).expanduser()
    if model.is_dir():
        volumes[str(model.resolve())] = _read_only(model.resolve())
    elif "/" in config.model and not config.model.startswith("llem/"):
        hub = _hf_hub_cache()
        if hub.exists():
            volumes[str(hub.resolve())] = _read_only(HF_HUB_IN_CONTAINER)
            env["HF_HUB_CACHE"] = HF_HUB_IN_CONTAINER
    extra = [config.lora_adapter] if config.lora_adapter else []
    if config.dataset not in BUILTIN_DATASETS:
        extra.append(config.dataset)
    for path in extra:
        resolved = Path(path).expanduser().resolve()
        volumes[str(resolved)] = _read_only(resolved)
    return volumes


def container_spec(config: ExperimentConfig, run_dir: Path, image: ImageInfo, assignment: GpuAssignment,
                   name: str, labels: dict[str, str]) -> dict[str, Any]:
    """Keyword arguments for `containers.create`."""
    import docker

    env = _environment(config, image, assignment)
    volumes = _volumes(config, run_dir, env)
    device_requests = [docker.types.DeviceRequest(device_ids=assignment.host_uuids, capabilities=[["gpu"]])] \
        if assignment.host_uuids else None
    return dict(
        image=image.id,
        name=name,
        environment=env,
        volumes=volumes,
        labels=labels,
        user=f"{os.getuid()}:{os.getgid()}",
        network_mode="none",
        privileged=False,
        # Nothing a measurement needs requires a capability or setuid: drop them all.
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        device_requests=device_requests,
        shm_size="1g",  # PyTorch and vLLM use /dev/shm; Docker's default 64 MB is too small
        working_dir="/tmp",
        detach=True,
    )


def engine_build_spec(spec: dict[str, Any]) -> None:
    """Turn a run's container spec into an engine build's: the engine is written straight
    into the mounted directory. Quantised builds calibrate on a dataset ModelOpt fetches
    from the Hub; a build is never measured, so it may use the network (runs may not)."""
    spec["entrypoint"] = ENGINE_BUILD_ENTRYPOINT
    spec["environment"][contract.ENV_TRT_ENGINE_OUT] = RUN_DIR_IN_CONTAINER
    spec["network_mode"] = "bridge"
    spec["environment"].pop("HF_HUB_OFFLINE", None)


def owner_labels(run_dir: Path) -> dict[str, str]:
    """Who started the container: the reaper removes it once that orchestrator is gone."""
    return {
        f"{LABEL}.study": run_dir.parent.parent.name,
        f"{LABEL}.run_id": run_dir.name,
        f"{LABEL}.tool_version": __version__,
        f"{LABEL}.owner_pid": str(os.getpid()),
        f"{LABEL}.owner_started": f"{psutil.Process().create_time():.2f}",
        f"{LABEL}.owner_host": platform.node(),
    }


def container_name(run_dir: Path) -> str:
    raw = f"llem-{run_dir.parent.parent.name}-{run_dir.name}"
    return "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in raw)[:200]


def owner_alive(pid: int, started: str | None) -> bool:
    """Whether the orchestrator that labelled a container still runs. The start time
    tells a live owner from an unrelated process that reused its pid (e.g. after a
    reboot)."""
    if not pid_alive(pid):
        return False
    if not started:
        return True
    try:
        return f"{psutil.Process(pid).create_time():.2f}" == started
    except psutil.Error:
        return True


def run_dir_of(container: Any) -> Path | None:
    """The host directory mounted as the container's run directory (None if there is none)."""
    for mount in container.attrs.get("Mounts") or []:
        if mount.get("Destination") == RUN_DIR_IN_CONTAINER and mount.get("Source"):
            return Path(mount["Source"])
    return None


def save_logs(container: Any, run_dir: Path) -> None:
    """The container's whole log into the run's run.log before the container is removed
    (its log goes with it). The copy streamed while the run went is cut short when llem
    was killed mid-run, or its stream broke; the engine's copy is whole. Never creates a
    removed run directory, and never replaces a longer log with a shorter one."""
    log = run_dir / contract.LOG_FILE
    try:
        data = container.logs(stdout=True, stderr=True)
    except Exception:  # noqa: BLE001 - no log driver or engine gone: the streamed copy stays
        return
    try:
        if data and run_dir.is_dir() and (not log.exists() or log.stat().st_size <= len(data)):
            write_bytes_atomic(log, data)
    except OSError:  # disk full: the streamed copy stays
        pass


def reap_orphans(client: Any) -> list[str]:
    """Remove llem containers whose orchestrator (on this host) is gone, after saving the
    log of each into its run directory (a run that finished after llem was killed keeps
    its result on resume, and with this its whole run.log)."""
    removed = []
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}.owner_host={platform.node()}"}):
        pid = int(c.labels.get(f"{LABEL}.owner_pid", "0") or 0)
        if pid and not owner_alive(pid, c.labels.get(f"{LABEL}.owner_started")):
            run_dir = run_dir_of(c)
            if run_dir is not None:
                save_logs(c, run_dir)
            c.remove(force=True)
            removed.append(c.name)
    return removed
