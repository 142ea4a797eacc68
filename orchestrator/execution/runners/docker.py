"""Docker runner: one ephemeral container per run, through the docker SDK.

Same contract as the local runner: the experiment as JSON in one environment
variable, files written into the run directory (mounted read-write), the exit
code as the outcome. Everything else the run reads is mounted read-only. The
container runs as the invoking user (results stay theirs), without network or
privileges, sees only the GPU its run uses, and is removed afterwards whatever
happens; containers whose orchestrator died are reaped at the next start.
"""

from __future__ import annotations

import math
import os
import platform
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from llenergymeasure.backends import __version__, contract
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness.environment import tool_commit
from llenergymeasure.backends.harness.gpu import nvml_inventory
from llenergymeasure.backends.paths import cache_dir, data_dir
from llenergymeasure.backends.prompts import BUILTIN_DATASETS
from llenergymeasure.orchestrator.execution.outcome import RunOutcome, log_tail, read_outcome
from llenergymeasure.orchestrator.build.engines import build_engines, gpu_for, hold_engine, material_for
from llenergymeasure.backends.processes import pid_alive
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.build.engine_store import EngineBuildFailed
from llenergymeasure.orchestrator.build.images import (
    LABEL, base_for, build_command, build_image, docker_client, find_image, image_tag, spec_for,
)
from llenergymeasure.orchestrator.execution import failures
from llenergymeasure.orchestrator.execution.runners.base import Notify, RunnerLost, register_runner
from llenergymeasure.orchestrator.execution.watchdog import RunGuard, Stop

RUN_DIR_IN_CONTAINER = "/llem/run"
CACHE_IN_CONTAINER = "/llem/cache"
DATA_IN_CONTAINER = "/llem/data"
HF_HUB_IN_CONTAINER = "/llem/hf-hub"
ENGINE_IN_CONTAINER = "/llem/engine"
STOP_GRACE_S = 10


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


@dataclass
class ContainerJob:
    """One container to run to completion: what, where, and how long it may take."""

    config: ExperimentConfig
    run_dir: Path
    name: str
    timeout_s: float | None = None
    on_tick: Callable[[float], None] | None = None
    engine: Path | None = None  # a TensorRT-LLM engine directory to mount
    task: str | None = None  # "build": build that engine instead of measuring
    extra_env: dict[str, str] | None = None
    stall_s: float | None = None
    stop_grace_s: float = STOP_GRACE_S
    gpus: Sequence[str] | None = None  # the parallel scheduler's GPUs for this run


def _hf_hub_cache() -> Path:
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    home = os.environ.get("HF_HOME") or str(Path.home() / ".cache" / "huggingface")
    return Path(home) / "hub"


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


def container_spec(
    config: ExperimentConfig,
    run_dir: Path,
    image: ImageInfo,
    assignment: GpuAssignment,
    name: str,
    labels: dict[str, str],
) -> dict[str, Any]:
    """Keyword arguments for `containers.create` (pure: unit-testable without an engine)."""
    import docker

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

    volumes: dict[str, dict[str, str]] = {
        str(run_dir.resolve()): {"bind": RUN_DIR_IN_CONTAINER, "mode": "rw"},
    }
    cache = cache_dir()
    if cache.exists():
        volumes[str(cache.resolve())] = {"bind": CACHE_IN_CONTAINER, "mode": "ro"}
    if data_dir().exists():
        volumes[str(data_dir().resolve())] = {"bind": DATA_IN_CONTAINER, "mode": "ro"}
    # Local model directories and dataset files keep their host path inside, so the
    # config (and its hash) is the same whichever runner executes it.
    model = Path(config.model).expanduser()
    if model.is_dir():
        volumes[str(model.resolve())] = {"bind": str(model.resolve()), "mode": "ro"}
    elif "/" in config.model and not config.model.startswith("llem/"):
        hub = _hf_hub_cache()
        if hub.exists():
            volumes[str(hub.resolve())] = {"bind": HF_HUB_IN_CONTAINER, "mode": "ro"}
            env["HF_HUB_CACHE"] = HF_HUB_IN_CONTAINER
    if config.lora_adapter:
        lora = Path(config.lora_adapter).expanduser().resolve()
        volumes[str(lora)] = {"bind": str(lora), "mode": "ro"}
    if config.dataset not in BUILTIN_DATASETS:
        ds = Path(config.dataset).expanduser().resolve()
        volumes[str(ds)] = {"bind": str(ds), "mode": "ro"}

    device_requests = []
    if assignment.host_uuids:
        device_requests.append(
            docker.types.DeviceRequest(device_ids=assignment.host_uuids, capabilities=[["gpu"]])
        )
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
        device_requests=device_requests or None,
        shm_size="1g",  # PyTorch and vLLM use /dev/shm; Docker's default 64 MB is too small
        working_dir="/tmp",
        detach=True,
    )


def reap_orphans(client: Any) -> list[str]:
    """Remove llem containers whose orchestrator (on this host) is gone."""
    host = platform.node()
    removed = []
    for c in client.containers.list(all=True, filters={"label": f"{LABEL}.owner_host={host}"}):
        pid = int(c.labels.get(f"{LABEL}.owner_pid", "0") or 0)
        started = c.labels.get(f"{LABEL}.owner_started")
        if pid and not owner_alive(pid, started):
            c.remove(force=True)
            removed.append(c.name)
    return removed


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


def _engine_lost(client: Any) -> bool:
    try:
        client.ping()
        return False
    except Exception:  # noqa: BLE001 - any failure to reach it means it is gone for us
        return True


def _container_name(run_dir: Path) -> str:
    study = run_dir.parent.parent.name
    raw = f"llem-{study}-{run_dir.name}"
    return "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in raw)[:200]


@register_runner("docker")
class DockerRunner:
    name = "docker"

    def __init__(self) -> None:
        self.client = docker_client()
        self.host_gpus = nvml_inventory()
        self.images: dict[str, ImageInfo] = {}  # backend -> image
        self.engines: dict[str, dict[str, Any]] = {}  # experiment id -> engine key material
        self.reaped = reap_orphans(self.client)

    def describe(self) -> str:
        v = self.client.version().get("Version", "?")
        tags = ", ".join(i.ref for i in self.images.values()) or "per backend"
        return f"docker runner: a fresh container per run (engine {v}; image {tags})"

    def resolve_device(self, spec: str) -> str:
        return assign_device(spec, self.host_gpus).inside

    def prepare(self, study: Any, notify: Notify, build: bool = True) -> None:
        if self.reaped:
            notify(f"removed {len(self.reaped)} orphaned container(s): {', '.join(self.reaped)}")
        for backend in sorted({e.config.backend for e in study.experiments}):
            spec, base, tag, image = self._find_image(backend)
            if image is None:
                if find_image(self.client, base) is None:
                    raise UserError(
                        f"backend '{backend}': image {tag} is not built and its base {base} is not "
                        f"available locally; build it with `{build_command(spec, base)}` "
                        "(or `make images`), or use --runner local"
                    )
                if not build:
                    notify(f"image {tag} for backend '{backend}' will be built from {base}")
                    continue
                notify(f"building image {tag} for backend '{backend}' from {base} (once)")
                image = build_image(self.client, spec, base, log=notify)
            self.images[backend] = ImageInfo.of(image, tag)
        if build:
            self.engines = build_engines(study.experiments, self, notify)

    def _find_image(self, backend: str) -> tuple[Any, str, str, Any]:
        """(image spec, base, content tag, the image under that tag or None)."""
        spec = spec_for(backend)
        base = base_for(spec)
        tag = image_tag(spec, base, self.client)
        return spec, base, tag, find_image(self.client, tag)

    def _image(self, backend: str) -> ImageInfo:
        """The backend's image; without `prepare` (a Slurm task on a node) the one already
        there under its content tag: a node never builds one behind the study's back."""
        if backend not in self.images:
            spec, base, tag, image = self._find_image(backend)
            if image is None:
                raise UserError(f"backend '{backend}': image {tag} is not on {platform.node()}; build it there "
                                f"first with `{build_command(spec, base)}` (or `make images`)")
            self.images[backend] = ImageInfo.of(image, tag)
        return self.images[backend]

    def _engine_material(self, config: ExperimentConfig) -> dict[str, Any]:
        """The run's engine key material: from `prepare`, or (a Slurm task) worked out here."""
        return self.engines.get(config.config_hash()) or material_for(config, gpu_for(self, config))

    # -- EngineHost: TensorRT-LLM engines are built in their own container
    def gpu_uuids(self, config: ExperimentConfig) -> list[str]:
        try:
            return assign_device(config.device, self.host_gpus, config.gpus_per_run).host_uuids
        except ValueError:
            return []

    def build_engine(self, config: ExperimentConfig, out_dir: Path) -> None:
        code, _ = self._run_container(ContainerJob(config, out_dir, f"llem-engine-{out_dir.name}", task="build"))
        if code != 0:
            raise EngineBuildFailed(
                f"engine build exited {code}; last lines of {out_dir / contract.LOG_FILE}:\n"
                + log_tail(out_dir)
            )

    def execute(
        self,
        config: ExperimentConfig,
        run_dir: Path,
        timeout_s: float | None,
        on_tick: Callable[[float], None] | None = None,
        extra_env: dict[str, str] | None = None,
        stall_s: float | None = None,
        stop_grace_s: float = STOP_GRACE_S,
        gpus: Sequence[str] | None = None,
    ) -> RunOutcome:
        job = ContainerJob(config, run_dir, _container_name(run_dir), timeout_s, on_tick, extra_env=extra_env,
                           stall_s=stall_s, stop_grace_s=stop_grace_s, gpus=gpus)
        run_dir.mkdir(parents=True, exist_ok=True)
        if config.backend == "tensorrt":
            with hold_engine(self._engine_material(config), config, self) as entry:
                job.engine = entry.path
                code, stop = self._run_container(job)
        else:
            code, stop = self._run_container(job)
        return read_outcome(run_dir, code, *((stop.reason, stop.kind) if stop else ()))

    def _run_container(self, job: ContainerJob) -> tuple[int | None, Stop | None]:
        """One container to completion: (exit code, why it failed if not by itself).
        Raises RunnerLost when the engine stops answering."""
        try:
            return self._container_lifecycle(job)
        except (KeyboardInterrupt, RunnerLost, UserError):
            raise
        except Exception as e:  # noqa: BLE001 - the SDK raises requests/urllib3/docker errors alike
            if _engine_lost(self.client):
                raise RunnerLost(f"the Docker engine became unreachable ({type(e).__name__}: {e})") from None
            if isinstance(e, OSError) and e.errno is not None:
                raise  # our own files (e.g. disk full): the study loop stops the study
            # the engine is there but failed this container: a failure of this run only
            return None, Stop(failures.CRASHED, f"Docker failed the run's container ({type(e).__name__}: {e})")

    def _container_lifecycle(self, job: ContainerJob) -> tuple[int | None, Stop | None]:
        import docker

        config, run_dir, stop_grace_s = job.config, job.run_dir, job.stop_grace_s
        run_dir.mkdir(parents=True, exist_ok=True)
        image = self._image(config.backend)
        assignment = assign_device(config.device, self.host_gpus, config.gpus_per_run, pinned=job.gpus)
        labels = {
            f"{LABEL}.study": run_dir.parent.parent.name,
            f"{LABEL}.run_id": run_dir.name,
            f"{LABEL}.tool_version": __version__,
            f"{LABEL}.owner_pid": str(os.getpid()),
            f"{LABEL}.owner_started": f"{psutil.Process().create_time():.2f}",
            f"{LABEL}.owner_host": platform.node(),
        }
        self._remove_if_present(job.name)  # a leftover from an interrupted attempt
        spec = container_spec(config, run_dir, image, assignment, job.name, labels)
        spec["environment"].update(job.extra_env or {})
        spec["environment"][contract.ENV_RUN_ID] = run_dir.name
        if os.environ.get(contract.ENV_TEST_FAULT):  # TEST HOOK (backends/harness/faults.py)
            spec["environment"][contract.ENV_TEST_FAULT] = os.environ[contract.ENV_TEST_FAULT]
        if job.engine is not None:
            spec["volumes"][str(job.engine)] = {"bind": ENGINE_IN_CONTAINER, "mode": "ro"}
            spec["environment"][contract.ENV_TRT_ENGINE_DIR] = ENGINE_IN_CONTAINER
        if job.task == "build":  # the engine is written straight into the mounted directory
            spec["entrypoint"] = ["python3", "-m", "llenergymeasure.backends.tensorrt", "build"]
            spec["environment"][contract.ENV_TRT_ENGINE_OUT] = RUN_DIR_IN_CONTAINER
            # Quantised builds calibrate on a dataset ModelOpt fetches from the Hub;
            # a build is never measured, so it may use the network (runs may not).
            spec["network_mode"] = "bridge"
            spec["environment"].pop("HF_HUB_OFFLINE", None)
        container = self.client.containers.create(**spec)
        log_thread: threading.Thread | None = None
        guard = RunGuard(run_dir, job.timeout_s, job.stall_s)
        try:
            container.start()
            log_thread = threading.Thread(
                target=self._copy_logs, args=(container, run_dir / contract.LOG_FILE), daemon=True
            )
            log_thread.start()
            while True:
                try:
                    container.reload()
                except docker.errors.NotFound:  # removed behind our back (docker rm -f)
                    return None, Stop(failures.CRASHED, "the container was removed while the run was going")
                state = container.attrs["State"]
                if container.status in ("exited", "dead"):
                    if state.get("OOMKilled"):
                        return state["ExitCode"], Stop(
                            failures.OUT_OF_MEMORY, "out of memory: the container was OOM-killed "
                            f"({failures.describe_exit(state['ExitCode'])})")
                    return state["ExitCode"], None
                if job.on_tick:
                    job.on_tick(time.monotonic() - guard.t0)
                stop = guard.check()
                if stop is not None:
                    container.stop(timeout=math.ceil(stop_grace_s))  # the API takes whole seconds
                    container.reload()
                    return container.attrs["State"].get("ExitCode"), stop
                time.sleep(0.25)
        except BaseException:
            try:
                container.stop(timeout=math.ceil(stop_grace_s))  # SIGTERM: the harness writes error.json
            except Exception:  # noqa: BLE001 - engine gone: keep the original error
                pass
            raise
        finally:
            if log_thread is not None:
                log_thread.join(timeout=10)
            try:
                container.remove(force=True)
            except Exception:  # noqa: BLE001 - engine gone: the reaper removes it at the next start
                pass

    def _remove_if_present(self, name: str) -> None:
        import docker

        try:
            self.client.containers.get(name).remove(force=True)
        except docker.errors.NotFound:
            pass

    @staticmethod
    def _copy_logs(container: Any, path: Path) -> None:
        try:
            with open(path, "wb") as f:
                for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                    f.write(chunk)
                    f.flush()
        except Exception:  # noqa: BLE001 - engine gone or disk full: the run's outcome says so
            pass
