"""The TensorRT-LLM adapter, driven by FakeTrtLlm.

TensorRT-LLM cannot be installed or run here (no PyPI wheels, no GPU), so nothing
in this file runs TensorRT-LLM. FakeTrtLlm stands in for it: it implements the
adapter's `TrtApi` protocol with the semantics read in the TensorRT-LLM source
(see backends/tensorrt/backend.py and tests/backends/test_pinned_apis_trt.py): `generate_async`
returns a result that async-iterates to itself while `outputs[0].token_ids`
grows cumulatively; at most the engine's max_batch_size requests run at once,
the rest wait; `ignore_eos` makes a request produce exactly `max_tokens`. Each
simulated step takes real (small) time, so the timestamps the adapter records
are real. tests/backends/test_pinned_apis_trt.py checks the real names against the source.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import json
import subprocess
import sys
import typing
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.tensorrt.config import TensorRTConfig
from llenergymeasure.backends.harness.energy import EnergyReading
from llenergymeasure.backends.harness.metrics import compute_metrics
from llenergymeasure.backends.harness.protocol import run_pass
from llenergymeasure.backends.registry import BackendUnavailable, create_backend
from llenergymeasure.backends.tensorrt.backend import (
    BUILD_FACTS_FILE,
    ENV_TRT_ENGINE_DIR,
    ENV_TRT_ENGINE_OUT,
    KV_CACHE_QUANT_ALGOS,
    QUANT_ALGOS,
    TensorRTBackend,
    build_engine,
    build_kwargs,
    check_workload_fits,
    count_parameters,
    main_build,
    runtime_kwargs,
    sampling_kwargs,
)

REPO = Path(__file__).resolve().parents[2]
BOS, EOS = 1, 2
PREFILL_S = 0.004  # simulated context phase per request
STEP_S = 0.002  # simulated generation step
FAKE_EOS_AFTER = 3  # without ignore_eos, the fake model emits EOS as its 3rd token


# -- FakeTrtLlm: stands in for TensorRT-LLM ----------------------------------------------------


class FakeQuantAlgo(str, enum.Enum):
    """Members as in tensorrt_llm.quantization.mode.QuantAlgo (a StrEnum of auto() names)."""

    W8A16 = "W8A16"
    W4A16 = "W4A16"
    W4A16_AWQ = "W4A16_AWQ"
    W4A16_GPTQ = "W4A16_GPTQ"
    W8A8_SQ_PER_CHANNEL = "W8A8_SQ_PER_CHANNEL"
    FP8 = "FP8"
    INT8 = "INT8"
    NO_QUANT = "NO_QUANT"


@dataclass(kw_only=True)
class FakeBuildConfig:  # a subset of tensorrt_llm.builder.BuildConfig, same defaults
    max_input_len: int = 1024
    max_seq_len: int | None = None
    max_batch_size: int = 2048
    max_num_tokens: int = 8192


@dataclass
class FakeQuantConfig:
    quant_algo: FakeQuantAlgo | None = None
    kv_cache_quant_algo: FakeQuantAlgo | None = None


@dataclass(kw_only=True)
class FakeKvCacheConfig:
    enable_block_reuse: bool = True
    free_gpu_memory_fraction: float | None = 0.9


@dataclass(kw_only=True)
class FakeSamplingParams:  # a subset of tensorrt_llm.sampling_params.SamplingParams
    end_id: int | None = None
    max_tokens: int = 32
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    temperature: float | None = None
    ignore_eos: bool = False
    detokenize: bool = True


class FakeTokenizer:
    """Whitespace tokenizer with a BOS, like an HF tokenizer's encode."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}

    def encode(self, text: str) -> list[int]:
        return [BOS] + [self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()]


@dataclass
class FakeCompletionOutput:
    index: int
    token_ids: list[int] = field(default_factory=list)


class FakeRequestOutput:
    """Async-iterates to itself; each step appends this update's tokens."""

    def __init__(self, llm: FakeTrtLlm, prompt: list[int], sp: FakeSamplingParams) -> None:
        asyncio.get_running_loop()  # like TensorRT-LLM: async results need a running loop
        self.outputs = [FakeCompletionOutput(0)]
        self.prompt_token_ids = list(prompt)
        self.finished = False
        self._steps = llm._steps(self, sp)

    def __aiter__(self) -> FakeRequestOutput:
        return self

    async def __anext__(self) -> FakeRequestOutput:
        if self.finished:
            raise StopAsyncIteration
        try:
            await self._steps.__anext__()
        except StopAsyncIteration:
            self.finished = True
            raise
        return self


class FakeTrtLlm:
    """Stands in for `tensorrt_llm._tensorrt_engine.LLM`: builds (writes) a fake engine
    from a checkpoint, or opens one and serves requests with continuous batching."""

    instances: list[FakeTrtLlm] = []

    def __init__(self, model: str, tokenizer: str | None = None, dtype: str = "auto",
                 tensor_parallel_size: int = 1, pipeline_parallel_size: int = 1,
                 build_config: FakeBuildConfig | None = None,
                 quant_config: FakeQuantConfig | None = None,
                 kv_cache_config: FakeKvCacheConfig | None = None) -> None:
        self.kwargs = {
            "model": model, "tokenizer": tokenizer, "dtype": dtype,
            "tensor_parallel_size": tensor_parallel_size,
            "pipeline_parallel_size": pipeline_parallel_size, "build_config": build_config,
            "quant_config": quant_config, "kv_cache_config": kv_cache_config,
        }
        self.shut_down = False
        self.submitted = 0
        self.running = 0
        self.max_running = 0
        self.tokens_per_update = 1
        engine_cfg = Path(model) / "config.json"
        cfg = json.loads(engine_cfg.read_text()) if engine_cfg.is_file() else {}
        if "build_config" in cfg:  # a built engine: serve it
            self.built = cfg["build_config"]
            self.tokenizer: FakeTokenizer | None = FakeTokenizer()
        else:  # a checkpoint: "build" the engine
            self.built = dataclasses.asdict(build_config or FakeBuildConfig())
            self.tokenizer = None
            self._dtype = dtype
        self._slots: asyncio.Semaphore | None = None
        FakeTrtLlm.instances.append(self)

    def save(self, engine_dir: str) -> None:
        out = Path(engine_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps({
            "version": "fake",
            "pretrained_config": {"dtype": "float16" if self._dtype == "auto" else self._dtype},
            "build_config": self.built,
        }))
        (out / "rank0.engine").write_bytes(b"fake engine")

    def shutdown(self) -> None:
        self.shut_down = True

    def generate_async(self, inputs: list[int], sampling_params: FakeSamplingParams | None = None,
                       streaming: bool = False) -> FakeRequestOutput:
        assert streaming, "the adapter must stream"
        assert isinstance(inputs, list) and all(isinstance(t, int) for t in inputs)
        assert len(inputs) <= self.built["max_input_len"]
        self.submitted += 1
        return FakeRequestOutput(self, inputs, sampling_params or FakeSamplingParams())

    async def _steps(self, out: FakeRequestOutput, sp: FakeSamplingParams):
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.built["max_batch_size"])
        async with self._slots:  # in flight: at most max_batch_size requests
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            try:
                await asyncio.sleep(PREFILL_S)
                tokens = out.outputs[0].token_ids
                while len(tokens) < sp.max_tokens:
                    for _ in range(self.tokens_per_update):
                        if len(tokens) >= sp.max_tokens:
                            break
                        nxt = EOS if len(tokens) + 1 == FAKE_EOS_AFTER else 100 + len(tokens)
                        tokens.append(nxt)
                        if nxt == EOS and not sp.ignore_eos:
                            break
                    yield
                    if tokens[-1] == EOS and not sp.ignore_eos:
                        return
                    await asyncio.sleep(STEP_S)
            finally:
                self.running -= 1


def fake_api() -> SimpleNamespace:
    return SimpleNamespace(
        LLM=FakeTrtLlm, BuildConfig=FakeBuildConfig, QuantConfig=FakeQuantConfig,
        QuantAlgo=FakeQuantAlgo, KvCacheConfig=FakeKvCacheConfig,
        SamplingParams=FakeSamplingParams, version="1.2.1+fake",
    )


def experiment(**kw: Any) -> ExperimentConfig:
    trt = kw.pop("tensorrt", {})
    base = {"model": "llem/tiny-llama", "backend": "tensorrt", "n_prompts": 20,
            "max_input_tokens": 6, "max_output_tokens": 7, "tensorrt": {"max_batch_size": 4, **trt}}
    return ExperimentConfig.model_validate({**base, **kw})


@pytest.fixture
def engine(tmp_path: Path, tiny_model: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fake engine for experiment()'s build settings, named by $LLEM_TRT_ENGINE_DIR."""
    out = tmp_path / "engine"
    build_engine(experiment(), tiny_model, out, api=fake_api())
    monkeypatch.setenv(ENV_TRT_ENGINE_DIR, str(out))
    return out


PROMPTS = [" ".join(f"w{i}x{j}" for j in range(3 + i % 7)) for i in range(20)]


# -- pure mappings --------------------------------------------------------------------------


def test_build_kwargs_defaults_leave_limits_to_tensorrt_llm() -> None:
    assert build_kwargs(experiment(tensorrt={})) == {
        "llm": {"dtype": "auto", "tensor_parallel_size": 1, "pipeline_parallel_size": 1},
        "build_config": {"max_batch_size": 4},
        "quant_config": None,
    }


def test_build_kwargs_every_setting() -> None:
    cfg = experiment(tensorrt={
        "dtype": "bfloat16", "max_batch_size": 16, "max_num_tokens": 4096, "max_input_len": 512,
        "max_seq_len": 1024, "tensor_parallel_size": 2, "pipeline_parallel_size": 2,
        "quantization": "w4a16_awq", "kv_cache_quantization": "fp8",
        "kv_cache_enable_block_reuse": False, "kv_cache_free_gpu_memory_fraction": 0.5,
    })
    assert build_kwargs(cfg) == {
        "llm": {"dtype": "bfloat16", "tensor_parallel_size": 2, "pipeline_parallel_size": 2},
        "build_config": {"max_batch_size": 16, "max_num_tokens": 4096, "max_input_len": 512,
                         "max_seq_len": 1024},
        "quant_config": {"quant_algo": "W4A16_AWQ", "kv_cache_quant_algo": "FP8"},
    }
    # runtime settings never reach the build (they are not part of the engine)
    assert "kv_cache_config" not in json.dumps(build_kwargs(cfg))


EXPECTED_QUANT = {
    "none": None, "fp8": "FP8", "int8_weight_only": "W8A16",
    "int8_smoothquant": "W8A8_SQ_PER_CHANNEL", "w4a16_awq": "W4A16_AWQ", "w4a16_gptq": "W4A16_GPTQ",
}


def _literal_options(field_name: str) -> set[str]:
    return set(typing.get_args(TensorRTConfig.model_fields[field_name].annotation))


def test_quant_tables_cover_exactly_the_config_options() -> None:
    assert set(QUANT_ALGOS) == _literal_options("quantization")
    assert set(KV_CACHE_QUANT_ALGOS) == _literal_options("kv_cache_quantization")
    assert QUANT_ALGOS == EXPECTED_QUANT
    assert KV_CACHE_QUANT_ALGOS == {"none": None, "fp8": "FP8", "int8": "INT8"}


@pytest.mark.parametrize("name", sorted(EXPECTED_QUANT))
def test_each_quantisation_reaches_quant_config(name: str) -> None:
    kw = build_kwargs(experiment(tensorrt={"quantization": name}))
    algo = EXPECTED_QUANT[name]
    assert kw["quant_config"] == (None if algo is None else {"quant_algo": algo})


def test_kv_cache_quantisation_alone() -> None:
    kw = build_kwargs(experiment(tensorrt={"kv_cache_quantization": "int8"}))
    assert kw["quant_config"] == {"kv_cache_quant_algo": "INT8"}


def test_builder_opt_level_is_not_a_setting() -> None:
    with pytest.raises(ValueError, match="builder_opt_level"):  # 1.2.1 can't set one
        experiment(tensorrt={"builder_opt_level": 4})


def test_runtime_kwargs() -> None:
    cfg = experiment(tensorrt={"kv_cache_enable_block_reuse": False,
                               "kv_cache_free_gpu_memory_fraction": 0.6})
    assert runtime_kwargs(cfg) == {
        "kv_cache_config": {"enable_block_reuse": False, "free_gpu_memory_fraction": 0.6}}


def test_sampling_kwargs_greedy_sets_no_sampling_field() -> None:
    assert sampling_kwargs(experiment()) == {"max_tokens": 7, "ignore_eos": True, "detokenize": False}


def test_sampling_kwargs_sampled() -> None:
    cfg = experiment(sampling={"temperature": 0.7, "top_p": 0.9, "top_k": 0}, seed=5,
                     ignore_eos=False)
    assert sampling_kwargs(cfg) == {
        "max_tokens": 7, "ignore_eos": False, "detokenize": False,
        "temperature": 0.7, "top_p": 0.9, "top_k": 0, "seed": 5,
    }


def test_workload_must_fit_the_engine_limits() -> None:
    check_workload_fits(experiment(max_input_tokens=1024))
    with pytest.raises(ValueError, match=r"max_input_len 1024 \(TensorRT-LLM's default"):
        check_workload_fits(experiment(max_input_tokens=1025))
    check_workload_fits(experiment(max_input_tokens=2000, tensorrt={"max_input_len": 2048}))
    with pytest.raises(ValueError, match="max_num_tokens 1000"):
        check_workload_fits(experiment(max_input_tokens=1010,
                                       tensorrt={"max_input_len": 2048, "max_num_tokens": 1000}))
    with pytest.raises(ValueError, match="max_seq_len 12"):
        check_workload_fits(experiment(tensorrt={"max_seq_len": 12}))  # 6 + 7 > 12
    check_workload_fits(experiment(tensorrt={"max_seq_len": 13}))


# -- engine build ------------------------------------------------------------------------------


def test_build_engine_with_fake(tmp_path: Path, tiny_model: Path) -> None:
    FakeTrtLlm.instances.clear()
    cfg = experiment(tensorrt={"dtype": "bfloat16", "quantization": "int8_smoothquant",
                               "kv_cache_quantization": "int8", "max_seq_len": 64})
    out = tmp_path / "eng"
    facts = build_engine(cfg, tiny_model, out, api=fake_api())

    (llm,) = FakeTrtLlm.instances
    assert llm.kwargs["model"] == str(tiny_model)
    assert llm.kwargs["dtype"] == "bfloat16"
    assert llm.kwargs["build_config"] == FakeBuildConfig(max_batch_size=4, max_seq_len=64)
    assert llm.kwargs["quant_config"] == FakeQuantConfig(
        quant_algo=FakeQuantAlgo.W8A8_SQ_PER_CHANNEL, kv_cache_quant_algo=FakeQuantAlgo.INT8)
    assert llm.kwargs["kv_cache_config"] is None  # runtime setting: not at build time
    assert llm.shut_down
    assert (out / "rank0.engine").is_file() and (out / "config.json").is_file()
    assert (out / "tokenizer.json").is_file() and not (out / "tokenizer.json").is_symlink()

    on_disk = json.loads((out / BUILD_FACTS_FILE).read_text())
    assert on_disk == facts
    assert facts["tensorrt_llm_version"] == "1.2.1+fake"
    assert facts["build_settings"] == cfg.tensorrt.build_settings()
    assert facts["build_seconds"] >= 0
    from transformers import AutoModelForCausalLM

    expected = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model).parameters())
    assert facts["n_parameters"] == expected > 0
    assert count_parameters(tiny_model)[0] == expected


def test_build_engine_refuses_a_non_empty_directory(tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "old").write_text("stale")
    with pytest.raises(ValueError, match="not empty"):
        build_engine(experiment(), tiny_model, tmp_path, api=fake_api())
    build_engine(experiment(), tiny_model, tmp_path / "new", api=fake_api())  # absent: fine
    (tmp_path / "empty").mkdir()
    build_engine(experiment(), tiny_model, tmp_path / "empty", api=fake_api())  # empty: fine


def test_main_build_reads_the_environment(tmp_path: Path, tiny_model: Path,
                                          monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("LLEM_EXPERIMENT_JSON", raising=False)
    monkeypatch.delenv(ENV_TRT_ENGINE_OUT, raising=False)
    assert main_build(api=fake_api()) == 1
    assert "LLEM_EXPERIMENT_JSON is not set" in capsys.readouterr().err

    monkeypatch.setenv("LLEM_EXPERIMENT_JSON", experiment().canonical_json())
    assert main_build(api=fake_api()) == 1
    assert f"{ENV_TRT_ENGINE_OUT} is not set" in capsys.readouterr().err

    monkeypatch.setenv(ENV_TRT_ENGINE_OUT, str(tmp_path / "engine"))
    assert main_build(api=fake_api()) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["model_path"] == str(tiny_model)
    assert (tmp_path / "engine" / "rank0.engine").is_file()

    monkeypatch.setenv("LLEM_EXPERIMENT_JSON", experiment(model="/no/such/model").canonical_json())
    monkeypatch.setenv(ENV_TRT_ENGINE_OUT, str(tmp_path / "engine2"))
    assert main_build(api=fake_api()) == 1
    assert "ModelNotFound" in capsys.readouterr().err


def test_cli_entry_without_tensorrt_llm(tmp_path: Path, tiny_model: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LLEM_CACHE_DIR": str(tiny_model.parent.parent)}
    r = subprocess.run([sys.executable, "-m", "llenergymeasure.backends.tensorrt"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and "usage: python -m llenergymeasure.backends.tensorrt build" in r.stderr
    env |= {"LLEM_EXPERIMENT_JSON": experiment().canonical_json(),
            ENV_TRT_ENGINE_OUT: str(tmp_path / "engine")}
    r = subprocess.run([sys.executable, "-m", "llenergymeasure.backends.tensorrt", "build"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "BackendUnavailable" in r.stderr and "tensorrt_llm" in r.stderr


# -- measured run ---------------------------------------------------------------------------


def test_missing_engine_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_TRT_ENGINE_DIR, raising=False)
    backend = TensorRTBackend(experiment(), api=fake_api())
    with pytest.raises(FileNotFoundError, match=f"{ENV_TRT_ENGINE_DIR} is not set"):
        backend.load()
    monkeypatch.setenv(ENV_TRT_ENGINE_DIR, str(tmp_path / "nowhere"))
    with pytest.raises(FileNotFoundError, match="no TensorRT-LLM engine there"):
        backend.load()
    (tmp_path / "eng").mkdir()
    (tmp_path / "eng" / "config.json").write_text("{}")
    monkeypatch.setenv(ENV_TRT_ENGINE_DIR, str(tmp_path / "eng"))
    with pytest.raises(FileNotFoundError, match=BUILD_FACTS_FILE):
        backend.load()


def test_engine_built_for_other_settings_is_refused(engine: Path) -> None:
    other = experiment(tensorrt={"max_batch_size": 8})
    with pytest.raises(ValueError, match="rebuild the engine"):
        TensorRTBackend(other, api=fake_api()).load()
    # runtime settings may differ: same engine
    same = experiment(tensorrt={"kv_cache_free_gpu_memory_fraction": 0.5})
    TensorRTBackend(same, api=fake_api()).load()


def test_registry_imports_without_tensorrt_llm(engine: Path) -> None:
    backend = create_backend(experiment())
    assert isinstance(backend, TensorRTBackend)
    with pytest.raises(BackendUnavailable, match="tensorrt_llm"):
        backend.load()  # the engine is there; TensorRT-LLM is not


def test_load_uses_runtime_settings_only(engine: Path) -> None:
    FakeTrtLlm.instances.clear()
    cfg = experiment(tensorrt={"kv_cache_enable_block_reuse": False,
                               "kv_cache_free_gpu_memory_fraction": 0.55})
    loaded = TensorRTBackend(cfg, api=fake_api()).load()
    (llm,) = FakeTrtLlm.instances
    assert llm.kwargs["model"] == str(engine)
    assert llm.kwargs["tokenizer"] == str(engine)  # build copied the tokenizer next to it
    assert llm.kwargs["kv_cache_config"] == FakeKvCacheConfig(
        enable_block_reuse=False, free_gpu_memory_fraction=0.55)
    assert llm.kwargs["build_config"] is None and llm.kwargs["quant_config"] is None
    assert loaded.n_parameters > 0
    assert loaded.dtype == "float16"  # from the engine's config.json
    assert loaded.extra["engine_dir"] == str(engine)


def _run(backend: TensorRTBackend, prompts: list[str]) -> tuple[Any, Any]:
    backend.load()
    prepared = backend.prepare(prompts)
    return prepared, run_pass(backend, prepared).records  # as the harness calls it: arrivals stamped


def test_prepare_tokenises_and_truncates(engine: Path) -> None:
    backend = TensorRTBackend(experiment(), api=fake_api())
    backend.load()
    prepared = backend.prepare(["a b", "a b c d e f g h i j"])
    assert [r.token_ids for r in prepared] == [[BOS, 10, 11], [BOS, 10, 11, 12, 13, 14]]


def test_warmup_runs_the_first_k_times_max_batch_size_requests(engine: Path) -> None:
    backend = TensorRTBackend(experiment(), api=fake_api())
    backend.load()
    prepared = backend.prepare(PROMPTS)
    assert len(backend.generate(prepared, max_batches=1)) == 4
    recs = backend.generate(prepared, max_batches=2)
    assert [r.input_tokens for r in recs] == [len(p.token_ids) for p in prepared[:8]]
    assert len(backend.generate(prepared, max_batches=100)) == 20
    assert len(backend.generate(prepared, max_batches=0)) == 0


def test_generate_records_and_metrics(engine: Path) -> None:
    backend = TensorRTBackend(experiment(), api=fake_api())
    prepared, records = _run(backend, PROMPTS)
    llm = backend.llm
    assert isinstance(llm, FakeTrtLlm)

    assert len(records) == 20 and llm.submitted == 20
    assert [r.input_tokens for r in records] == [min(4 + i % 7, 6) for i in range(20)]
    assert all(r.output_tokens == 7 for r in records)  # fixed length (ignore_eos)
    for r in records:
        assert r.submitted_s <= r.token_times_s[0]
        assert r.token_times_s == sorted(r.token_times_s)
        assert r.token_times_s[0] - r.submitted_s >= PREFILL_S * 0.9
    # all submitted at once: every submission precedes the first request's end
    assert max(r.submitted_s for r in records) < min(r.token_times_s[-1] for r in records)
    # the engine ran max_batch_size at a time, so later requests waited for a slot
    assert llm.max_running == 4
    assert records[-1].token_times_s[0] - records[-1].submitted_s > 3 * (PREFILL_S + 6 * STEP_S)

    t0 = min(r.submitted_s for r in records)
    duration = max(r.token_times_s[-1] for r in records) - t0
    m = compute_metrics(records, EnergyReading(duration_s=duration, energy_j=10.0),
                        model_load_s=0.1, peak_memory_mb=None, n_parameters=1000,
                        baseline_power_w=None)
    assert m.n_requests == 20 and m.output_tokens == 140
    assert m.input_tokens == sum(r.input_tokens for r in records)
    assert m.ttft_ms_p50 >= PREFILL_S * 1000 * 0.9
    assert m.itl_ms_p50 >= STEP_S * 1000 * 0.9
    assert m.ttft_ms_p99 > m.ttft_ms_p50  # queued requests waited
    assert m.energy_per_output_token_j == pytest.approx(10.0 / 140)


def test_without_ignore_eos_requests_stop_at_eos(engine: Path) -> None:
    backend = TensorRTBackend(experiment(ignore_eos=False), api=fake_api())
    _, records = _run(backend, PROMPTS[:5])
    assert [r.output_tokens for r in records] == [FAKE_EOS_AFTER] * 5


def test_tokens_arriving_together_share_a_timestamp(engine: Path) -> None:
    backend = TensorRTBackend(experiment(), api=fake_api())
    backend.load()
    assert isinstance(backend.llm, FakeTrtLlm)
    backend.llm.tokens_per_update = 2
    (rec,) = backend.generate(backend.prepare(PROMPTS[:1]))
    t = rec.token_times_s
    assert len(t) == 7
    assert t[0] == t[1] and t[2] == t[3] and t[4] == t[5] and t[1] < t[2] < t[4] < t[6]


def test_sampling_params_reach_each_request(engine: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[FakeSamplingParams] = []
    original = FakeTrtLlm.generate_async

    def spy(self: FakeTrtLlm, inputs: list[int], sampling_params: Any = None,
            streaming: bool = False) -> Any:
        seen.append(sampling_params)
        return original(self, inputs, sampling_params=sampling_params, streaming=streaming)

    monkeypatch.setattr(FakeTrtLlm, "generate_async", spy)
    cfg = experiment(sampling={"temperature": 0.8, "top_p": 0.95, "top_k": 40}, seed=3)
    _run(TensorRTBackend(cfg, api=fake_api()), PROMPTS[:3])
    assert len(seen) == 3 and len({id(sp) for sp in seen}) == 3  # one object per request
    assert seen[0] == FakeSamplingParams(max_tokens=7, ignore_eos=True, detokenize=False,
                                         temperature=0.8, top_p=0.95, top_k=40, seed=3)
