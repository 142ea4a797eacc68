"""A real vLLM study through the Docker runner, in the vLLM image for this machine (the CPU
variant, images/vllm/Dockerfile.cpu, where there is no GPU). The image is large, so the
tests do not build it: they skip with the command when it is absent (.ci/run builds it
before the suite)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tests.support.helpers import docker_unavailable_reason, llem, write

VLLM_DOCKER_STUDY = """\
name: vllm-docker
model: llem/tiny-llama
backend: vllm
dataset: synthetic
n_prompts: 4
max_input_tokens: 16
max_output_tokens: 4
measurement: {min_window_s: 0, warmup_batches: 1, baseline_s: 0}
vllm: {enforce_eager: true, dtype: float32}
"""


@pytest.fixture(scope="module")
def vllm_image(tiny_model: Path):
    """The vLLM image of the current content for this machine, found whatever base it was
    built on (no LLEM_BASE_IMAGE_VLLM needed); skips, naming the build command, without one."""
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(reason)
    import docker

    from llenergymeasure.orchestrator.build.images import build_advice, host_has_gpus, resolve_image

    client = docker.from_env()
    gpus = host_has_gpus()
    r = resolve_image(client, "vllm", gpus)
    if r.image is None:
        pytest.skip(f"the vLLM image for this machine ({r.tag}, {r.choice.spec.display_name}) is not built: "
                    f"{build_advice(client, r.choice, gpus)} (.ci/run builds it)")
    return r


@pytest.mark.slow
def test_a_vllm_study_runs_in_the_vllm_image(tmp_path, vllm_image, monkeypatch):
    monkeypatch.delenv("LLEM_BASE_IMAGE_VLLM", raising=False)  # the image remembers its base
    out = tmp_path / "out"
    r = llem("run", str(write(tmp_path / "v.yaml", VLLM_DOCKER_STUDY)), "--runner", "docker", "-o", str(out),
             timeout=1200)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (study_dir,) = out.iterdir()
    runs = pd.read_parquet(study_dir / "runs.parquet")
    assert list(runs["status"]) == ["done"]
    assert int(runs["output_tokens"].iloc[0]) > 0
    # the image of this variant (the harness may have changed since the fixture looked, in a
    # tree being edited: then the runner built the new content on the same base, in seconds)
    (ref,) = set(runs["image_ref"])
    assert ref.startswith(f"{vllm_image.choice.spec.repository}:")
    labels = json.loads(subprocess.run(["docker", "image", "inspect", "-f", "{{json .Config.Labels}}", ref],
                                       capture_output=True, text=True).stdout)
    assert labels["org.llenergymeasure.variant"] == vllm_image.choice.spec.variant
    env = json.loads((study_dir / "runs/e01-c1/result.json").read_text())["environment"]
    assert env["in_container"] is True and env["image"]["base"] == vllm_image.base
    leftover = subprocess.run(["docker", "ps", "-a", "-q", "--filter",
                               f"label=org.llenergymeasure.study={study_dir.name}"],
                              capture_output=True, text=True).stdout.split()
    assert leftover == []


def test_a_publication_lock_pins_the_image_the_runs_use(tmp_path, vllm_image):
    """The lock records the image the Docker runner resolves (the current content on the
    base it was built on: the local CPU base here), not the default base's tag, under which
    no image exists on this machine, so a lock made here used to pin `id: None`."""
    from llenergymeasure.orchestrator.publication.lock import image_pins
    from llenergymeasure.orchestrator.study.load import load_study

    study = load_study(write(tmp_path / "v.yaml", VLLM_DOCKER_STUDY))
    pin = image_pins(study)["vllm"]
    assert pin["id"] == vllm_image.image.id and pin["tag"] == vllm_image.ref
    assert pin["base"] == vllm_image.base
