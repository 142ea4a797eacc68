"""Study-level TensorRT-LLM engine handling: one build per distinct engine, before
any run, shared by experiments that differ only in runtime settings."""

from __future__ import annotations

from pathlib import Path

import pytest

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.orchestrator.build import engine_store as trt_cache
from llenergymeasure.orchestrator.build.engines import build_engines, hold_engine, plan_engines, trtllm_version
from llenergymeasure.orchestrator.study.load import load_study
from tests.support.helpers import llem, write

STUDY = """
model: llem/tiny-llama
backend: tensorrt
n_prompts: 4
max_input_tokens: 16
max_output_tokens: 4
sweep:
  tensorrt.max_batch_size: [1, 4]
  tensorrt.kv_cache_free_gpu_memory_fraction: [0.5, 0.9]
"""


class FakeEngineHost:
    """Stands in for a runner on a GPU host: `build_engine` writes files where
    TensorRT-LLM (which can't run here) would write the engine."""

    def __init__(self) -> None:
        self.builds: list[int] = []

    def gpu_uuids(self, config: ExperimentConfig) -> list[str]:
        return []

    def build_engine(self, config: ExperimentConfig, out_dir: Path) -> None:
        self.builds.append(config.tensorrt.max_batch_size)
        (out_dir / "rank0.engine").write_bytes(b"engine" * 100)
        (out_dir / "config.json").write_text("{}")


@pytest.fixture
def cache(tmp_path, monkeypatch, tiny_model):
    monkeypatch.setenv("LLEM_TRT_CACHE_DIR", str(tmp_path / "engines"))
    return tmp_path / "engines"


def test_one_build_per_engine_runtime_settings_share(tmp_path, cache):
    study = load_study(write(tmp_path / "s.yaml", STUDY))
    host = FakeEngineHost()
    plans = plan_engines(study.experiments, host)
    assert len(plans) == 4 and len({p.key for p in plans.values()}) == 2
    assert not any(p.cached for p in plans.values())

    materials = build_engines(study.experiments, host, notify=lambda m: None)
    assert sorted(host.builds) == [1, 4]  # two engines for four experiments
    assert all(p.cached for p in plan_engines(study.experiments, host).values())
    build_engines(study.experiments, host, notify=lambda m: None)
    assert len(host.builds) == 2  # a second study reuses the cache

    exp = study.experiments[0]
    with hold_engine(materials[exp.id], exp.config, host) as entry:
        assert (entry.path / "rank0.engine").exists()
        assert entry.material["tensorrt_llm"] == trtllm_version() == "1.2.1"
        assert entry.build["build_seconds"] >= 0 and entry.build["energy_j"] is None
        removed = trt_cache.prune(max_total_gb=0)
        assert [e.key for e in removed] != [] and entry.key not in [e.key for e in removed]
        assert entry.path.exists()  # in use: kept; the other engine went


def test_cross_backend_dry_run_lists_images_and_engine_keys(tiny_model):
    r = llem("run", "studies/cross-backend.yaml", "--dry-run")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    for tag in ("llem-pytorch:", "llem-vllm:", "llem-tensorrt:"):
        assert tag in out
    for backend in ("backend=pytorch", "backend=vllm", "backend=tensorrt"):
        assert out.count(backend) == 3
    assert out.count("(to build)") + out.count("(cached)") == 3
    assert "TensorRT-LLM engine keys are for TensorRT-LLM 1.2.1" in out
    assert "not runnable here" in out  # no GPU here, said plainly
