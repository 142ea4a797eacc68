"""Docker runner: one ephemeral container per run, through the docker SDK.

Same contract as the local runner: the experiment as JSON in one environment
variable, files written into the run directory (mounted read-write), the exit
code as the outcome. Everything else the run reads is mounted read-only. The
container runs as the invoking user (results stay theirs), without network or
privileges, sees only the GPU its run uses, and is removed afterwards whatever
happens; containers whose orchestrator died are reaped at the next start.
What the container looks like is container.py; its lifecycle is here.
"""

from __future__ import annotations

import math
import os
import platform
import threading
import time
from pathlib import Path
from typing import Any

from llenergymeasure.backends import contract
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness.gpu import nvml_inventory
from llenergymeasure.orchestrator.build.engine_store import EngineBuildFailed
from llenergymeasure.orchestrator.build.engines import build_engines, gpu_for, hold_engine, material_for
from llenergymeasure.orchestrator.build.images import (
    Resolved, build_advice, build_image, docker_client, find_image, resolve_image,
)
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.execution import failures
from llenergymeasure.orchestrator.execution.outcome import RunOutcome, log_tail, read_outcome
from llenergymeasure.orchestrator.execution.runners.base import Runner, RunJob, RunnerLost
from llenergymeasure.orchestrator.execution.runners.container import (
    ENGINE_IN_CONTAINER, ImageInfo, assign_device, container_name, container_spec, engine_build_spec,
    owner_labels, reap_orphans, save_logs,
)
from llenergymeasure.orchestrator.execution.watchdog import RunGuard, Stop
from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.study.spec import Study

POLL_S = 0.25


def _engine_lost(client: Any) -> bool:
    try:
        client.ping()
        return False
    except Exception:  # noqa: BLE001 - any failure to reach it means it is gone for us
        return True


class DockerRunner(Runner):
    name = "docker"

    def __init__(self) -> None:
        self.client = docker_client()
        self.host_gpus = nvml_inventory()
        self.images: dict[str, ImageInfo] = {}  # backend -> image
        self.engines: dict[str, dict[str, Any]] = {}  # experiment id -> engine key material
        self.reaped = reap_orphans(self.client)

    def describe(self) -> str:
        v = self.client.version().get("Version", "?")
        tags = ", ".join(f"{i.ref} on {i.base.split('@')[0]}" if i.base else i.ref
                         for i in self.images.values()) or "per backend"
        return f"docker runner: a fresh container per run (engine {v}; image {tags})"

    def resolve_device(self, spec: str) -> str:
        return assign_device(spec, self.host_gpus).inside

    def prepare(self, study: Study, notify: Notify, build: bool = True) -> None:
        if self.reaped:
            notify(f"removed {len(self.reaped)} orphaned container(s): {', '.join(self.reaped)}")
        for backend in sorted({e.config.backend for e in study.experiments}):
            self._prepare_image(backend, notify, build)
        if build:
            self.engines = build_engines(study.experiments, self, notify)

    def _prepare_image(self, backend: str, notify: Notify, build: bool) -> None:
        r = self._resolve(backend)
        choice, image, ref = r.choice, r.image, r.ref
        if image is None:
            if find_image(self.client, choice.base) is None:
                raise UserError(
                    f"backend '{backend}': image {r.tag} is not built and its base {choice.base} is not "
                    f"available locally; build it with {build_advice(self.client, choice, bool(self.host_gpus))} "
                    "(or `make images`), or use --runner local"
                )
            if choice.why:
                notify(choice.why)
            if not build:
                notify(f"image {r.tag} for backend '{backend}' will be built from {choice.base}")
                return
            notify(f"building image {r.tag} for backend '{backend}' from {choice.base} (once)")
            image, ref = build_image(self.client, choice.spec, choice.base, log=notify), r.tag
        elif r.other_base:
            notify(f"backend '{backend}': image {ref}, built on {r.base} (found by its content; "
                   f"{choice.base} has none)")
        self.images[backend] = ImageInfo.of(image, ref)

    def _resolve(self, backend: str) -> Resolved:
        """The backend's image here: of the current content, on whatever base it was built
        (build/images.py `resolve_image`; the GPU image where this host has GPUs)."""
        return resolve_image(self.client, backend, gpus=bool(self.host_gpus))

    def _image(self, backend: str) -> ImageInfo:
        """The backend's image; without `prepare` (a Slurm task on a node) the one already
        there under its content tag: a node never builds one behind the study's back."""
        if backend not in self.images:
            r = self._resolve(backend)
            if r.image is None:
                raise UserError(f"backend '{backend}': image {r.tag} is not on {platform.node()}; build it there "
                                f"first with {build_advice(self.client, r.choice, bool(self.host_gpus))} "
                                "(or `make images`)")
            self.images[backend] = ImageInfo.of(r.image, r.ref)
        return self.images[backend]

    def gpu_uuids(self, config: ExperimentConfig) -> list[str]:
        try:
            return assign_device(config.device, self.host_gpus, config.gpus_per_run).host_uuids
        except ValueError:
            return []

    # -- EngineHost: TensorRT-LLM engines are built in their own container
    def build_engine(self, config: ExperimentConfig, out_dir: Path) -> None:
        code, _ = self._run_container(RunJob(config, out_dir), f"llem-engine-{out_dir.name}", build=True)
        if code != 0:
            raise EngineBuildFailed(
                f"engine build exited {code}; last lines of {out_dir / contract.LOG_FILE}:\n" + log_tail(out_dir)
            )

    def execute(self, job: RunJob) -> RunOutcome:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        name = container_name(job.run_dir)
        if job.config.backend == "tensorrt":
            # engine key material from `prepare`; a Slurm task (no prepare) works it out here
            material = self.engines.get(job.config.config_hash()) or material_for(job.config,
                                                                                gpu_for(self, job.config))
            with hold_engine(material, job.config, self) as entry:
                code, stop = self._run_container(job, name, engine=entry.path)
        else:
            code, stop = self._run_container(job, name)
        return read_outcome(job.run_dir, code, *((stop.reason, stop.kind) if stop else ()))

    def _run_container(self, job: RunJob, name: str, engine: Path | None = None,
                       build: bool = False) -> tuple[int | None, Stop | None]:
        """One container to completion: (exit code, why it failed if not by itself).
        Raises RunnerLost when the engine stops answering."""
        try:
            container = self._create(job, name, engine, build)
            return self._lifecycle(container, job)
        except (KeyboardInterrupt, RunnerLost, UserError):
            raise
        except Exception as e:  # noqa: BLE001 - the SDK raises requests/urllib3/docker errors alike
            if _engine_lost(self.client):
                raise RunnerLost(f"the Docker engine became unreachable ({type(e).__name__}: {e})") from None
            if isinstance(e, OSError) and e.errno is not None:
                raise  # our own files (e.g. disk full): the study loop stops the study
            # the engine is there but failed this container: a failure of this run only
            return None, Stop(failures.CRASHED, f"Docker failed the run's container ({type(e).__name__}: {e})")

    def _create(self, job: RunJob, name: str, engine: Path | None, build: bool) -> Any:
        job.run_dir.mkdir(parents=True, exist_ok=True)
        assignment = assign_device(job.config.device, self.host_gpus, job.config.gpus_per_run, pinned=job.gpus)
        self._remove_if_present(name)  # a leftover from an interrupted attempt
        spec = container_spec(job.config, job.run_dir, self._image(job.config.backend), assignment, name,
                              owner_labels(job.run_dir))
        spec["environment"].update(job.extra_env)
        spec["environment"][contract.ENV_RUN_ID] = job.run_dir.name
        if os.environ.get(contract.ENV_TEST_FAULT):  # TEST HOOK (backends/harness/faults.py)
            spec["environment"][contract.ENV_TEST_FAULT] = os.environ[contract.ENV_TEST_FAULT]
        if engine is not None:
            spec["volumes"][str(engine)] = {"bind": ENGINE_IN_CONTAINER, "mode": "ro"}
            spec["environment"][contract.ENV_TRT_ENGINE_DIR] = ENGINE_IN_CONTAINER
        if build:
            engine_build_spec(spec)
        return self.client.containers.create(**spec)

    def _lifecycle(self, container: Any, job: RunJob) -> tuple[int | None, Stop | None]:
        """Start, copy the logs, watch until it ends or must be stopped; always remove it."""
        log_thread = threading.Thread(target=_copy_logs, args=(container, job.run_dir / contract.LOG_FILE),
                                      daemon=True)
        try:
            container.start()
            log_thread.start()
            return _watch(container, job, RunGuard(job.run_dir, job.timeout_s, job.stall_s))
        except BaseException:
            try:
                container.stop(timeout=math.ceil(job.stop_grace_s))  # SIGTERM: the harness writes error.json
            except Exception:  # noqa: BLE001 - engine gone: keep the original error
                pass
            raise
        finally:
            if log_thread.ident is not None:  # it was started
                log_thread.join(timeout=10)
            save_logs(container, job.run_dir)  # the whole log, before it goes with the container
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


def _watch(container: Any, job: RunJob, guard: RunGuard) -> tuple[int | None, Stop | None]:
    import docker

    while True:
        try:
            container.reload()
        except docker.errors.NotFound:  # removed behind our back (docker rm -f)
            return None, Stop(failures.CRASHED, "the container was removed while the run was going")
        state = container.attrs["State"]
        if container.status in ("exited", "dead"):
            if state.get("OOMKilled"):
                return state["ExitCode"], Stop(failures.OUT_OF_MEMORY, "out of memory: the container was "
                                               f"OOM-killed ({failures.describe_exit(state['ExitCode'])})")
            return state["ExitCode"], None
        if job.on_tick:
            job.on_tick(time.monotonic() - guard.t0)
        stop = guard.check()
        if stop is not None:
            container.stop(timeout=math.ceil(job.stop_grace_s))  # the API takes whole seconds
            container.reload()
            return container.attrs["State"].get("ExitCode"), stop
        time.sleep(POLL_S)


def _copy_logs(container: Any, path: Path) -> None:
    try:
        with open(path, "wb") as f:
            for chunk in container.logs(stream=True, follow=True, stdout=True, stderr=True):
                f.write(chunk)
                f.flush()
    except Exception:  # noqa: BLE001 - engine gone or disk full: the run's outcome says so
        pass
