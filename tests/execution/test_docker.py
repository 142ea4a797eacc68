"""The Docker runner against a real Docker engine and a real image (skips without one)."""

from __future__ import annotations

import json
import os
import platform
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import yaml

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.orchestrator.execution.runners.container import GpuAssignment, ImageInfo, assign_device, container_spec
from tests.support.helpers import DOCKER_ENV, LOCAL_BASE, REPO, llem, wait_for_second_run, write

TINY = """
model: llem/tiny-llama
n_prompts: 4
max_input_tokens: 16
max_output_tokens: 4
measurement: {min_window_s: 0}   # one pass: these tests are about orchestration
"""
SECRET = "hf_llemTestSecret0123456789"


def llem_containers(study_dir: Path | None = None) -> list[str]:
    f = "label=org.llenergymeasure.study" + (f"={study_dir.name}" if study_dir else "")
    out = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f], capture_output=True, text=True)
    return out.stdout.split()


# -- no engine needed --------------------------------------------------------------

def test_gpu_pinning_by_uuid():
    gpus = [(0, "GPU-aaa", "H100"), (1, "GPU-bbb", "H100")]
    assert assign_device("auto", []) == GpuAssignment("cpu")
    assert assign_device("cpu", gpus) == GpuAssignment("cpu")
    assert assign_device("auto", gpus) == GpuAssignment("cuda:0", ["GPU-aaa"])
    assert assign_device("cuda:1", gpus) == GpuAssignment("cuda:0", ["GPU-bbb"])
    with pytest.raises(ValueError, match="has no NVIDIA GPU"):
        assign_device("cuda", [])
    with pytest.raises(ValueError, match="has 2 GPU"):
        assign_device("cuda:2", gpus)
    # a run spanning two GPUs (tensor parallel) gets both, from its device on
    assert assign_device("cuda:0", gpus, n=2) == GpuAssignment("cuda:0", ["GPU-aaa", "GPU-bbb"])
    with pytest.raises(ValueError, match="2 GPUs from cuda:1 requested"):
        assign_device("cuda:1", gpus, n=2)
    # the parallel scheduler's choice wins over `device: cuda:N`; a CPU run stays on the CPU
    assert assign_device("cuda:0", gpus, pinned=["GPU-bbb"]) == GpuAssignment("cuda:0", ["GPU-bbb"])
    assert assign_device("cpu", gpus, pinned=["GPU-bbb"]) == GpuAssignment("cpu")


def test_container_spec_is_locked_down(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"prompt": "hi"}\n')
    cfg = ExperimentConfig(model=str(tiny_model), dataset=str(data))
    spec = container_spec(
        cfg, tmp_path / "run", ImageInfo("sha256:abc", "llem-pytorch:x"),
        GpuAssignment("cuda:0", ["GPU-bbb"]), "llem-s-e01-c1", {"k": "v"},
    )
    assert spec["network_mode"] == "none" and spec["privileged"] is False
    assert spec["cap_drop"] == ["ALL"] and spec["security_opt"] == ["no-new-privileges:true"]
    assert spec["user"] == f"{os.getuid()}:{os.getgid()}"
    env = spec["environment"]
    assert ExperimentConfig.model_validate_json(env["LLEM_EXPERIMENT_JSON"]) == cfg
    assert env["HF_TOKEN"] == SECRET and env["LLEM_DEVICE"] == "cuda:0"
    modes = {v["bind"]: v["mode"] for v in spec["volumes"].values()}
    assert modes.pop("/llem/run") == "rw"
    assert set(modes.values()) == {"ro"}
    assert str(tiny_model.resolve()) in modes and str(data.resolve()) in modes
    (req,) = spec["device_requests"]
    assert req["DeviceIDs"] == ["GPU-bbb"] and req["Capabilities"] == [["gpu"]]


def test_no_engine_is_a_clear_exit_2(tmp_path):
    f = write(tmp_path / "s.yaml", TINY)
    env = {"DOCKER_HOST": f"unix://{tmp_path}/no-such.sock"}
    r = llem("run", str(f), "--runner", "docker", "-o", str(tmp_path / "out"), env=env)
    assert r.returncode == 2 and "no Docker engine is reachable" in r.stderr and "--runner local" in r.stderr
    assert not (tmp_path / "out").exists()
    r = llem("run", str(f), "--runner", "auto", "--dry-run", env=env)
    assert r.returncode == 0 and "runner: local (no Docker engine is reachable)" in r.stdout


def test_gpu_backend_on_a_host_without_gpus_exits_2(tmp_path):
    f = write(tmp_path / "s.yaml", TINY + "backend: tensorrt\n")  # vLLM runs on the CPU now; TensorRT-LLM never
    r = llem("run", str(f), "--runner", "local", "-o", str(tmp_path / "out"))
    assert r.returncode == 2 and "needs an NVIDIA GPU" in r.stderr


def test_compose_defines_one_buildable_service_per_backend_image():
    """One service per image llem builds: each backend's main image, and `<backend>-cpu`
    (profile cpu) for each CPU variant, on the same Dockerfile."""
    from llenergymeasure.orchestrator.build.images import CPU, IMAGES, MAIN, spec_for, variants

    compose = yaml.safe_load((REPO / "compose.yaml").read_text())
    services = compose["services"]
    expected = {(b if v == MAIN else f"{b}-{v}"): spec_for(b, v) for b in IMAGES for v in variants(b)}
    assert set(services) == set(expected) and "vllm-cpu" in expected
    for name, spec in expected.items():
        assert (REPO / services[name]["build"]["context"] / services[name]["build"]["dockerfile"]) == spec.dockerfile
        assert (services[name].get("profiles") == [CPU]) == (spec.variant == CPU), name
    for name, svc in services.items():
        ctx = REPO / svc["build"]["context"]
        assert ctx.is_dir() and (ctx / svc["build"]["dockerfile"]).is_file(), name
        # the compose default base is the Dockerfile's pinned one (a single truth)
        default = svc["build"]["args"]["BASE_IMAGE"].split(":-", 1)[1].rstrip("}")
        assert f"ARG BASE_IMAGE={default}\n" in (ctx / svc["build"]["dockerfile"]).read_text(), name
    if subprocess.run(["which", "docker-compose"], capture_output=True).returncode == 0:
        r = subprocess.run(["docker-compose", "-f", str(REPO / "compose.yaml"), "config", "-q"],
                           capture_output=True, text=True)
        assert r.returncode == 0, r.stderr


def test_every_dockerfile_pins_its_base_by_version_and_digest():
    from llenergymeasure.orchestrator.build.images import IMAGES, default_base

    for spec in IMAGES.values():
        base = default_base(spec)
        assert "@sha256:" in base and ":" in base.split("@")[0], base
        text = spec.dockerfile.read_text()
        assert 'ENTRYPOINT ["python3", "-m", "llenergymeasure.backends"]' in text and "COPY backends/" in text


# -- real engine, real image -----------------------------------------------------

@pytest.mark.slow
def test_docker_study_runs_in_containers_and_leaves_none(tmp_path, docker_image):
    f = write(tmp_path / "d.yaml", TINY + """
sweep: {pytorch.batch_size: [1, 4]}
execution: {n_cycles: 2}
""")
    out = tmp_path / "out"
    r = llem("run", str(f), "--runner", "docker", "-o", str(out), env={**DOCKER_ENV, "HF_TOKEN": SECRET})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    (study_dir,) = out.iterdir()
    image_id = subprocess.run(["docker", "image", "inspect", "-f", "{{.Id}}", docker_image],
                              capture_output=True, text=True).stdout.strip()
    runs = pd.read_parquet(study_dir / "runs.parquet")
    assert len(runs) == 4 and (runs["status"] == "done").all()
    assert set(runs["image_id"]) == {image_id} and set(runs["image_ref"]) == {docker_image}
    for res in study_dir.glob("runs/*/result.json"):
        env = json.loads(res.read_text())["environment"]
        assert env["in_container"] is True and env["hostname"] != platform.node()
        assert env["image"]["id"] == image_id
        assert res.stat().st_uid == os.getuid()
        assert (res.parent / "run.log").read_text().count("llem.harness") >= 3
    assert json.loads((study_dir / "manifest.json").read_text())["runner"] == "docker"
    assert llem_containers(study_dir) == []
    for p in study_dir.rglob("*"):  # the secret reached the runs' environment only
        if p.is_file():
            assert SECRET.encode() not in p.read_bytes(), p


@pytest.mark.slow
def test_timeout_kills_the_container_and_the_study_goes_on(tmp_path, docker_image):
    f = write(tmp_path / "t.yaml", TINY + """
experiments:
  - {n_prompts: 400, max_output_tokens: 64}
  - {}
execution: {n_cycles: 1, order: sequential, run_timeout_s: 20}
""")
    out = tmp_path / "out"
    r = llem("run", str(f), "--runner", "docker", "-o", str(out), env=DOCKER_ENV)
    assert r.returncode == 1, r.stdout[-2000:]
    (study_dir,) = out.iterdir()
    runs = json.loads((study_dir / "manifest.json").read_text())["runs"]
    assert [x["state"] for x in runs] == ["failed", "done"]
    assert runs[0]["error"].startswith("timed out after 20 s")
    assert llem_containers(study_dir) == []


@pytest.mark.slow
def test_sigint_removes_the_container_and_keeps_finished_runs(tmp_path, docker_image):
    f = write(tmp_path / "i.yaml", TINY + """
sweep: {pytorch.batch_size: [1, 2, 4]}
execution: {n_cycles: 1, order: sequential}
""")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "llenergymeasure.orchestrator.cli", "run", str(f), "--runner", "docker",
                             "-o", str(out)], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **DOCKER_ENV})
    manifest = wait_for_second_run(out)
    time.sleep(3)
    assert len(llem_containers(manifest.parent)) == 1  # the running one
    proc.send_signal(signal.SIGINT)
    stdout, stderr = proc.communicate(timeout=90)
    assert proc.returncode == 130, stdout[-2000:] + stderr[-2000:]
    assert llem_containers(manifest.parent) == []
    states = [x["state"] for x in json.loads(manifest.read_text())["runs"]]
    assert states == ["done", "failed", "pending"]
    assert (manifest.parent / "runs/e01-c1/result.json").exists()


def test_missing_image_names_the_build_command(tmp_path, docker_image):
    f = write(tmp_path / "m.yaml", TINY)
    env = {"LLEM_BASE_IMAGE_PYTORCH": "llem-test-absent:base"}
    r = llem("run", str(f), "--runner", "docker", "-o", str(tmp_path / "out"), env=env)
    assert r.returncode == 2
    assert "llem images build pytorch --base llem-test-absent:base" in r.stderr
    assert not (tmp_path / "out").exists()
    r = llem("run", str(f), "--dry-run", env=env)
    assert r.returncode == 0 and "runner: local (Docker engine reachable, but image for 'pytorch'" in r.stdout


def test_auto_picks_docker_when_the_image_exists(tmp_path, docker_image):
    r = llem("run", str(write(tmp_path / "a.yaml", TINY)), "--dry-run", env=DOCKER_ENV)
    assert r.returncode == 0 and "runner: docker" in r.stdout and docker_image in r.stdout


def test_images_list_shows_the_expected_tag(docker_image):
    r = llem("images", "list", env=DOCKER_ENV)
    assert r.returncode == 0
    line = next(x for x in r.stdout.splitlines() if x.startswith("pytorch"))
    assert docker_image in line and "present sha256:" in line


def test_orphaned_containers_are_reaped(docker_image):
    import docker

    from llenergymeasure.orchestrator.build.images import LABEL
    from llenergymeasure.orchestrator.execution.runners.docker import DockerRunner

    dead = subprocess.Popen(["true"])
    dead.wait()
    client = docker.from_env()
    c = client.containers.create(
        docker_image, entrypoint=["sleep", "60"], name="llem-test-orphan",
        labels={f"{LABEL}.study": "orphan-test", f"{LABEL}.owner_pid": str(dead.pid),
                f"{LABEL}.owner_host": platform.node()},
    )
    c.start()
    try:
        runner = DockerRunner()
        assert "llem-test-orphan" in runner.reaped
        assert c.id[:12] not in llem_containers()
    finally:
        try:
            c.remove(force=True)
        except docker.errors.NotFound:
            pass


def test_rebuilding_a_mutable_base_makes_its_images_stale(docker_image):
    import docker

    from llenergymeasure.orchestrator.build.images import IMAGES, image_tag

    client = docker.from_env()
    spec = IMAGES["pytorch"]
    client.images.get(docker_image).tag("llem-test-base", "mutable")  # stands in for a base
    try:
        before = image_tag(spec, "llem-test-base:mutable", client)
        client.images.get(LOCAL_BASE).tag("llem-test-base", "mutable")  # the "base" is rebuilt
        after = image_tag(spec, "llem-test-base:mutable", client)
        assert before != after
        pinned = "repo/x:1@sha256:" + "0" * 64
        assert image_tag(spec, pinned, client) == image_tag(spec, pinned)  # digest refs: by name
    finally:
        client.images.remove("llem-test-base:mutable", noprune=True)
