"""The TensorRT-LLM engine cache, host side, with a fake builder in real processes.

TensorRT-LLM cannot run here; `fake_engine_builder` stands in for it: it writes
engine-like files, sleeps a little (so concurrent callers overlap) and appends
one line per build to a counter file, so tests can count real builds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.tensorrt.config import TensorRTConfig
from llenergymeasure.orchestrator.build import engine_keys as keys
from llenergymeasure.orchestrator.build import engine_store as tc
from tests.support.helpers import REPO, llem

GPU_H100 = {"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}
COMMIT = "a" * 40


def fake_engine_builder(out: Path, counter: Path | None = None, sleep_s: float = 0.0,
                        size: int = 4096) -> dict:
    """Stands in for TensorRT-LLM's engine build: writes an engine and a config."""
    t0 = time.monotonic()
    if sleep_s:
        time.sleep(sleep_s)
    (out / "rank0.engine").write_bytes(os.urandom(size))
    (out / "config.json").write_text(json.dumps({"fake": True, "pid": os.getpid()}))
    (out / "tokenizer").mkdir()
    (out / "tokenizer" / "tokenizer.json").write_text("{}")
    if counter is not None:
        with open(counter, "a") as f:
            f.write(f"{os.getpid()}\n")
    return {"build_seconds": round(time.monotonic() - t0, 3), "energy_j": None, "builder": "fake"}


def builder(counter: Path | None = None, sleep_s: float = 0.0, size: int = 4096):
    return lambda out: fake_engine_builder(out, counter, sleep_s, size)


def cfg(**trt) -> ExperimentConfig:
    return ExperimentConfig(model="org/model", backend="tensorrt", tensorrt=trt or None)


def material(config: ExperimentConfig | None = None, **over) -> dict:
    args = {"revision": COMMIT, "trtllm_version": "0.20.0", "gpu": GPU_H100, **over}
    return keys.key_material(config or cfg(), **args)


@pytest.fixture
def cache(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "engines"
    monkeypatch.setenv(tc.ENV_TRT_CACHE_DIR, str(root))
    return root


def count(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


# ----------------------------------------------------------------------------- the key

# One value different from the default for every build setting.
OTHER_BUILD_VALUES = {
    "dtype": "float16",
    "max_batch_size": 16,
    "max_num_tokens": 4096,
    "max_input_len": 512,
    "max_seq_len": 1024,
    "tensor_parallel_size": 2,
    "pipeline_parallel_size": 2,
    "quantization": "fp8",
    "kv_cache_quantization": "fp8",
}


def test_every_build_setting_is_covered():
    assert set(OTHER_BUILD_VALUES) == set(TensorRTConfig().build_settings()), \
        "a build setting was added or removed: update OTHER_BUILD_VALUES"


@pytest.mark.parametrize("name", sorted(OTHER_BUILD_VALUES))
def test_key_changes_with_each_build_setting(name):
    base = keys.engine_key(material())
    changed = keys.engine_key(material(cfg(**{name: OTHER_BUILD_VALUES[name]})))
    assert changed != base


def test_key_changes_with_version_revision_and_gpu():
    base = keys.engine_key(material())
    variants = [
        material(trtllm_version="0.21.0"),
        material(revision="b" * 40),
        material(gpu={"name": GPU_H100["name"], "compute_capability": "8.0"}),
        material(gpu={"name": "NVIDIA A100-SXM4-80GB", "compute_capability": "8.0"}),
        material(gpu={"name": "NVIDIA H200", "compute_capability": "9.0"}),
        keys.key_material(ExperimentConfig(model="org/other", backend="tensorrt"),
                        COMMIT, "0.20.0", GPU_H100),
        material(extra={"tensorrt": "10.9"}),
    ]
    found = {keys.engine_key(m) for m in variants}
    assert base not in found and len(found) == len(variants)


def test_key_ignores_runtime_only_settings():
    base = keys.engine_key(material())
    runtime = [
        cfg(kv_cache_free_gpu_memory_fraction=0.5),
        cfg(kv_cache_enable_block_reuse=False),
        ExperimentConfig(model="org/model", backend="tensorrt", n_prompts=7, seed=1, dataset="x.jsonl",
                         sampling={"temperature": 0.7, "top_p": 0.9, "top_k": 5}, ignore_eos=False,
                         max_input_tokens=999, max_output_tokens=3, device="cuda:1",
                         measurement={"warmup_batches": 3, "baseline_s": 2}),
    ]
    for c in runtime:
        assert keys.engine_key(material(c)) == base, c
    # an explicit default section and an omitted one are the same engine
    assert keys.engine_key(material(cfg(max_batch_size=8))) == base


def test_key_is_a_sha256_of_canonical_material():
    import hashlib

    from llenergymeasure.backends.config import canonical_json

    m = material()
    assert keys.engine_key(m) == hashlib.sha256(canonical_json(m).encode()).hexdigest()
    assert m["build"] == cfg().tensorrt.build_settings()
    assert "kv_cache_free_gpu_memory_fraction" not in json.dumps(m)


def test_key_material_refuses_other_backends():
    with pytest.raises(tc.UserError):
        keys.key_material(ExperimentConfig(model="m"), COMMIT, "0.20.0", GPU_H100)


# ----------------------------------------------------------------------------- revision, GPU


def test_revision_of_local_directory_is_a_content_hash(tmp_path, cache):
    d = tmp_path / "model"
    (d / "sub").mkdir(parents=True)
    (d / "config.json").write_text("{}")
    (d / "sub" / "weights.bin").write_bytes(b"\x00" * 100)
    (d / ".hidden").write_text("counted too")
    r1 = keys.revision_of(str(d))
    assert r1.startswith("sha256:") and keys.revision_of(str(d)) == r1
    (d / "sub" / "weights.bin").write_bytes(b"\x01" + b"\x00" * 99)  # same size, new bytes
    r2 = keys.revision_of(str(d))
    assert r2 != r1
    (d / "sub" / "weights.bin").rename(d / "sub" / "weights2.bin")  # same bytes, new name
    assert keys.revision_of(str(d)) not in (r1, r2)
    (d / ".hidden").unlink()
    assert keys.revision_of(str(d)) != r2


def test_revision_of_local_directory_refuses_a_broken_link(tmp_path, cache):
    d = tmp_path / "model"
    d.mkdir()
    (d / "config.json").write_text("{}")
    (d / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(tc.UserError, match="broken symbolic link"):
        keys.revision_of(str(d))


def test_revision_of_hf_id_is_the_snapshot_commit(tmp_path, cache, monkeypatch):
    import huggingface_hub.constants as hfc

    hub = tmp_path / "hub"
    repo = hub / "models--org--model"
    (repo / "snapshots" / COMMIT).mkdir(parents=True)
    (repo / "snapshots" / COMMIT / "config.json").write_text("{}")
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(COMMIT)
    monkeypatch.setattr(hfc, "HF_HUB_CACHE", str(hub))
    assert keys.revision_of("org/model") == COMMIT
    with pytest.raises(tc.UserError, match="hf download"):
        keys.revision_of("org/absent")


def test_revision_of_builtin_model_hashes_its_files(tiny_model, cache):
    r = keys.revision_of("llem/tiny-llama")
    assert r == "sha256:" + keys.directory_content_hash(tiny_model)


def test_gpu_identity_without_gpu_and_with_nvml(monkeypatch):
    import types

    class NVMLError(Exception):
        pass

    def no_driver():
        raise NVMLError("no driver")

    fake = types.SimpleNamespace(nvmlInit=no_driver, NVMLError=NVMLError)
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert keys.gpu_identity() == {"name": "none", "compute_capability": None}

    handles = {0: "h0", 1: "h1"}
    fake = types.SimpleNamespace(
        NVMLError=NVMLError, nvmlInit=lambda: None, nvmlShutdown=lambda: None,
        nvmlDeviceGetHandleByIndex=lambda i: handles[i],
        nvmlDeviceGetHandleByUUID=lambda u: "h1",
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3" if h == "h0" else "NVIDIA A100",
        nvmlDeviceGetCudaComputeCapability=lambda h: (9, 0) if h == "h0" else (8, 0),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    assert keys.gpu_identity() == GPU_H100
    assert keys.gpu_identity(1) == {"name": "NVIDIA A100", "compute_capability": "8.0"}
    assert keys.gpu_identity(uuid="GPU-x") == {"name": "NVIDIA A100", "compute_capability": "8.0"}


# ----------------------------------------------------------------------------- build, hit, damage


def test_build_once_then_hit(cache, tmp_path):
    counter = tmp_path / "builds"
    m = material()
    e1 = tc.ensure_engine(m, builder(counter))
    assert e1.path == cache / keys.engine_key(m) and e1.problem is None
    meta = json.loads((e1.path / tc.METADATA).read_text())
    assert meta["key"] == e1.key and meta["material"] == m
    assert {f["path"] for f in meta["files"]} == {"rank0.engine", "config.json", "tokenizer/tokenizer.json"}
    assert all(len(f["sha256"]) == 64 and f["size"] > 0 for f in meta["files"])
    assert meta["build"]["builder"] == "fake" and meta["build"]["energy_j"] is None
    assert meta["created_at"] and meta["last_used_at"]
    e2 = tc.ensure_engine(m, builder(counter))
    assert count(counter) == 1 and e2.key == e1.key and e2.created_at == e1.created_at
    assert not list(cache.glob(".tmp-*"))
    assert oct((e1.path / "rank0.engine").stat().st_mode)[-3:] == "644"
    assert tc.verify(e1.key).problem is None


@pytest.mark.parametrize("damage", ["truncate", "delete-metadata", "delete-file", "garbage-metadata"])
def test_damaged_entry_is_rebuilt(cache, tmp_path, damage):
    counter = tmp_path / "builds"
    m = material()
    e = tc.ensure_engine(m, builder(counter))
    engine = e.path / "rank0.engine"
    if damage == "truncate":
        data = engine.read_bytes()
        engine.write_bytes(data[: len(data) // 2])
    elif damage == "delete-metadata":
        (e.path / tc.METADATA).unlink()
    elif damage == "delete-file":
        (e.path / "tokenizer" / "tokenizer.json").unlink()
    else:
        (e.path / tc.METADATA).write_text("{not json")
    assert tc.list_engines()[0].problem
    e2 = tc.ensure_engine(m, builder(counter))
    assert count(counter) == 2 and e2.problem is None and tc.verify(e2.key).problem is None
    assert not list(cache.glob(".t*-*"))


def test_same_size_corruption_needs_full_verify(cache, tmp_path):
    counter = tmp_path / "builds"
    m = material()
    e = tc.ensure_engine(m, builder(counter))
    engine = e.path / "rank0.engine"
    data = bytearray(engine.read_bytes())
    data[0] ^= 0xFF
    engine.write_bytes(bytes(data))
    assert tc.ensure_engine(m, builder(counter)).key == e.key and count(counter) == 1  # sizes only
    assert "checksum mismatch" in tc.verify(e.key).problem
    tc.ensure_engine(m, builder(counter), verify=True)
    assert count(counter) == 2 and tc.verify(e.key).problem is None


def test_failed_build_leaves_nothing(cache):
    def broken(out: Path) -> dict:
        (out / "partial.engine").write_bytes(b"x")
        raise RuntimeError("out of memory")

    with pytest.raises(tc.EngineBuildFailed, match="out of memory"):
        tc.ensure_engine(material(), broken)
    with pytest.raises(tc.EngineBuildFailed, match="no files"):
        tc.ensure_engine(material(), lambda out: {})
    assert [p.name for p in cache.iterdir()] == [".locks"]


def test_leftover_tmp_of_dead_process_is_cleaned(cache, tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    other_key = "f" * 64
    m = material()
    cache.mkdir(parents=True)
    stale = [cache / f".tmp-{keys.engine_key(m)}-{pid}", cache / f".tmp-{other_key}-{pid}",
             cache / f".trash-{other_key}-{pid}-123"]
    live = cache / f".tmp-{other_key}-{os.getppid()}"  # a live process building another key
    for d in [*stale, live]:
        d.mkdir()
        (d / "rank0.engine").write_bytes(b"half")
    tc.ensure_engine(m, builder())
    assert [d for d in stale if d.exists()] == [] and live.exists()


# ----------------------------------------------------------------------------- real processes

RACER = textwrap.dedent("""
    import json, sys
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from llenergymeasure.orchestrator.build import engine_keys as keys
    from llenergymeasure.orchestrator.build import engine_store as tc
    from tests.build.test_trt_cache import fake_engine_builder, material
    Path(sys.argv[2]).touch()
    entry = tc.ensure_engine(material(), lambda out: fake_engine_builder(out, Path(sys.argv[1]), 1.5))
    print(json.dumps({{"key": entry.key, "path": str(entry.path), "created_at": entry.created_at,
                      "files": entry.files}}))
""")


def _wait_for(paths: list[Path], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        assert time.monotonic() < deadline, f"timed out waiting for {paths}"
        time.sleep(0.02)


def test_two_processes_racing_build_once(cache, tmp_path):
    counter = tmp_path / "builds"
    script = tmp_path / "racer.py"
    script.write_text(RACER.format(repo=str(REPO)))
    started = [tmp_path / "started0", tmp_path / "started1"]
    env = {**os.environ, tc.ENV_TRT_CACHE_DIR: str(cache)}
    procs = [subprocess.Popen([sys.executable, str(script), str(counter), str(s)], cwd=REPO, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for s in started]
    _wait_for(started)
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        outs.append(json.loads(out))
    assert count(counter) == 1, "both processes built the engine"
    assert outs[0] == outs[1]
    assert tc.verify(outs[0]["key"]).problem is None
    assert [p.name for p in cache.iterdir() if p.name.startswith(".tmp")] == []


HOLDER = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {repo!r})
    from pathlib import Path
    from llenergymeasure.orchestrator.build import engine_keys as keys
    from llenergymeasure.orchestrator.build import engine_store as tc
    with tc.use_engine(sys.argv[1]):
        Path(sys.argv[2]).touch()
        while not Path(sys.argv[3]).exists():
            time.sleep(0.05)
""")


def _age(entry: tc.EngineEntry, days: float) -> None:
    meta_path = entry.path / tc.METADATA
    meta = json.loads(meta_path.read_text())
    when = (time.time() - days * 86400)
    from datetime import datetime, timezone

    meta["last_used_at"] = datetime.fromtimestamp(when, timezone.utc).isoformat(timespec="seconds")
    meta_path.write_text(json.dumps(meta))


def _populate(cache: Path) -> list[tc.EngineEntry]:
    """Three engines of 1 MB each, last used 1, 10 and 100 days ago."""
    entries = []
    for days, bs in ((1, 1), (10, 2), (100, 4)):
        e = tc.ensure_engine(material(cfg(max_batch_size=bs)), builder(size=1_000_000))
        _age(e, days)
        entries.append(e)
    return entries


def test_cli_list_and_prune_on_a_populated_cache(cache, tmp_path):
    new, mid, old = _populate(cache)
    env = {tc.ENV_TRT_CACHE_DIR: str(cache)}
    r = llem("cache", "list", env=env)
    assert r.returncode == 0, r.stderr
    for e in (new, mid, old):
        assert e.key[:12] in r.stdout
    assert "org/model" in r.stdout and "max_batch_size=4" in r.stdout and "3 engine(s)" in r.stdout
    assert r.stdout.index(new.key[:12]) < r.stdout.index(old.key[:12])  # most recent first

    r = llem("cache", "prune", "--older-than", "30", "--dry-run", env=env)
    assert r.returncode == 0 and f"would remove {old.key[:12]}" in r.stdout
    assert old.path.exists()

    r = llem("cache", "prune", "--older-than", "30", env=env)
    assert r.returncode == 0, r.stderr
    assert f"removed {old.key[:12]}" in r.stdout and mid.key[:12] not in r.stdout
    assert not old.path.exists() and mid.path.exists() and new.path.exists()

    r = llem("cache", "prune", "--max-size", "0.0015", env=env)  # room for one 1 MB engine
    assert r.returncode == 0, r.stderr
    assert f"removed {mid.key[:12]}" in r.stdout and new.path.exists() and not mid.path.exists()

    (new.path / "rank0.engine").write_bytes(b"cut")  # damaged: removed even without options
    r = llem("cache", "list", env=env)
    assert "damaged" in r.stdout
    r = llem("cache", "prune", env=env)
    assert r.returncode == 0 and f"removed {new.key[:12]}" in r.stdout and not new.path.exists()
    r = llem("cache", "list", env=env)
    assert r.returncode == 0 and "no cached engines" in r.stdout

    r = llem("cache", "prune", "--older-than", "-1", env=env)
    assert r.returncode == 2 and "--older-than" in r.stderr


def test_prune_never_removes_an_engine_in_use_by_another_process(cache, tmp_path):
    new, mid, old = _populate(cache)
    script = tmp_path / "holder.py"
    script.write_text(HOLDER.format(repo=str(REPO)))
    held, release = tmp_path / "held", tmp_path / "release"
    env = {**os.environ, tc.ENV_TRT_CACHE_DIR: str(cache)}
    holder = subprocess.Popen([sys.executable, str(script), old.key, str(held), str(release)],
                              cwd=REPO, env=env, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for([held])
        listed = tc.list_engines()  # use_engine marked it used: now the most recent
        assert [(e.key, e.in_use) for e in listed] == [(old.key, True), (new.key, False), (mid.key, False)]
        r = llem("cache", "prune", "--max-size", "0", env={tc.ENV_TRT_CACHE_DIR: str(cache)})
        assert r.returncode == 0, r.stderr
        assert old.path.exists() and tc.verify(old.key).problem is None
        assert not new.path.exists() and not mid.path.exists()
        assert f"{old.key[:12]} org/model: in use, kept" in r.stderr
        assert tc.prune(older_than_days=0) == [] and old.path.exists()
    finally:
        release.touch()
        holder.communicate(timeout=60)
    assert holder.returncode == 0
    assert [e.key for e in tc.prune(older_than_days=0)] == [old.key] and not old.path.exists()
    assert not (cache / ".locks" / f"{old.key}.lock").exists()


def test_engine_in_use_rebuilds_after_prune(cache, tmp_path):
    counter = tmp_path / "builds"
    m = material()
    with tc.engine_in_use(m, builder(counter)) as e:
        assert tc.prune(max_total_gb=0) == [] and e.path.exists()
    assert [x.key for x in tc.prune(max_total_gb=0)] == [e.key]
    with pytest.raises(tc.EngineMissing):
        with tc.use_engine(e.key):
            pass
    with tc.engine_in_use(m, builder(counter)) as e2:
        assert e2.key == e.key and e2.path.exists()
    assert count(counter) == 2
