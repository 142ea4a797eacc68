"""TensorRT-LLM backend: the LLM API's TensorRT-engine flow, pinned to TensorRT-LLM 1.2.1.

Two phases, in two processes:

1. Engine build (`build_engine`, CLI `python -m llenergymeasure.backends.tensorrt build`), run by
   the orchestrator in its own container before any measured run, never inside a
   measured window. It constructs the engine-flow LLM from the Hugging Face
   checkpoint with the build settings of `TensorRTConfig` (a `BuildConfig`, a
   `QuantConfig`, dtype, parallelism), saves the engine with `llm.save(dir)` and
   writes `llem_build.json` (build facts) beside it.
2. Measured run (`TensorRTBackend`): `load()` opens the prebuilt engine named by
   `$LLEM_TRT_ENGINE_DIR` with runtime settings only (`KvCacheConfig`);
   `generate()` submits every request at once with `generate_async(...,
   streaming=True)` and stamps `time.perf_counter()` on the host as each streamed
   token arrives.

In TensorRT-LLM 1.x `tensorrt_llm.LLM` is the PyTorch backend; the TensorRT-engine
LLM is `tensorrt_llm._tensorrt_engine.LLM` (an alias of
`tensorrt_llm.llmapi.llm._TrtLLM`). tensorrt_llm is imported lazily (only in the
TensorRT-LLM image), through `TRTLLM_IMPORTS`; everything passed to it comes from
the pure functions `build_kwargs`, `runtime_kwargs` and `sampling_kwargs`, whose
every key tests/backends/test_pinned_apis_trt.py checks against the pinned source.
"""

from __future__ import annotations

import asyncio
import importlib
import json
import os
import shutil
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Protocol

from llenergymeasure.backends import contract
from llenergymeasure.backends.atomic import write_json_atomic
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.tensorrt.config import TensorRTConfig
from llenergymeasure.backends.devices import run_device
from llenergymeasure.backends.models import count_parameters, resolve_model
from llenergymeasure.backends.registry import (
    AdapterWarning, BackendUnavailable, LoadedModel, RequestRecord, register_backend,
)

TRTLLM_VERSION = "1.2.1"

# Environment of the two phases (to move into backends/contract.py).
ENV_TRT_ENGINE_DIR = contract.ENV_TRT_ENGINE_DIR  # measured run: the prebuilt engine to open
ENV_TRT_ENGINE_OUT = contract.ENV_TRT_ENGINE_OUT  # engine build: where to write the engine

# Written by build_engine next to the engine files. Not `llem_engine.json`: that
# name belongs to the host-side engine cache (orchestrator/build/engine_store.py).
BUILD_FACTS_FILE = "llem_build.json"
BUILD_FACTS_FORMAT = 1

# Where each TensorRT-LLM name the adapter uses is defined in 1.2.1. The pinned-API
# test checks every entry against the source.
TRTLLM_IMPORTS: dict[str, tuple[str, str]] = {
    "LLM": ("tensorrt_llm._tensorrt_engine", "LLM"),  # TensorRT-engine flow, not PyTorch
    "BuildConfig": ("tensorrt_llm.builder", "BuildConfig"),
    "QuantConfig": ("tensorrt_llm.models.modeling_utils", "QuantConfig"),
    "QuantAlgo": ("tensorrt_llm.quantization.mode", "QuantAlgo"),
    "KvCacheConfig": ("tensorrt_llm.llmapi.llm_args", "KvCacheConfig"),
    "SamplingParams": ("tensorrt_llm.sampling_params", "SamplingParams"),
}
TRTLLM_VERSION_MODULE = "tensorrt_llm.version"  # defines __version__

# Methods the adapter calls on the engine-flow LLM, with the parameter names it binds
# (a positional argument binds the first listed name).
LLM_METHODS_USED: dict[str, tuple[str, ...]] = {
    "generate_async": ("inputs", "sampling_params", "streaming"),
    "save": ("engine_dir",),
    "shutdown": (),
}

# llem quantisation name -> QuantAlgo member (weights and activations).
QUANT_ALGOS: dict[str, str | None] = {
    "none": None,
    "fp8": "FP8",  # FP8 weights and activations, per-tensor scales (ModelOpt calibration)
    "int8_weight_only": "W8A16",  # INT8 weights, 16-bit activations (no calibration)
    "int8_smoothquant": "W8A8_SQ_PER_CHANNEL",  # SmoothQuant (ModelOpt "int8_sq")
    "w4a16_awq": "W4A16_AWQ",  # INT4 AWQ weights (ModelOpt calibration)
    "w4a16_gptq": "W4A16_GPTQ",  # INT4 GPTQ weights (needs a GPTQ-quantised checkpoint)
}
# llem KV-cache quantisation name -> QuantAlgo member.
KV_CACHE_QUANT_ALGOS: dict[str, str | None] = {
    "none": None,
    "fp8": "FP8",
    "int8": "INT8",
}

# BuildConfig defaults in 1.2.1 that the workload check relies on when a limit is
# left unset (checked against the source by the pinned-API test).
TRT_DEFAULT_MAX_INPUT_LEN = 1024
TRT_DEFAULT_MAX_NUM_TOKENS = 8192

# Tokenizer files copied next to the engine so the measured run needs only the engine.
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "tokenizer.model",
    "vocab.json", "vocab.txt", "merges.txt", "added_tokens.json", "generation_config.json",
)


# -- what the adapter needs from TensorRT-LLM (the real one, or a test fake) ------------


class TrtTokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class TrtStream(Protocol):
    """`generate_async(..., streaming=True)` result: async-iterates to itself, its
    `outputs[0].token_ids` growing (cumulative) until the request finishes."""

    outputs: list[Any]

    def __aiter__(self) -> AsyncIterator[Any]: ...


class TrtLLM(Protocol):
    """The subset of `tensorrt_llm._tensorrt_engine.LLM` the adapter uses."""

    @property
    def tokenizer(self) -> TrtTokenizer | None: ...

    def generate_async(self, inputs: Any, sampling_params: Any = None,
                       streaming: bool = False) -> TrtStream: ...

    def save(self, engine_dir: str) -> None: ...

    def shutdown(self) -> None: ...


class TrtApi(Protocol):
    """The TensorRT-LLM names the adapter uses (see `TRTLLM_IMPORTS`)."""

    LLM: Callable[..., TrtLLM]
    BuildConfig: Callable[..., Any]
    QuantConfig: Callable[..., Any]
    QuantAlgo: Any
    KvCacheConfig: Callable[..., Any]
    SamplingParams: Callable[..., Any]
    version: str


def load_api() -> TrtApi:
    """Import TensorRT-LLM (only present in its image)."""
    try:
        names = {
            name: getattr(importlib.import_module(module), attr)
            for name, (module, attr) in TRTLLM_IMPORTS.items()
        }
        version = importlib.import_module(TRTLLM_VERSION_MODULE).__version__
    except ImportError as e:
        raise BackendUnavailable(
            f"backend: tensorrt needs the tensorrt_llm package ({e}); run it in the TensorRT-LLM "
            f"image (tensorrt_llm {TRTLLM_VERSION}) with a CUDA GPU"
        ) from None
    return SimpleNamespace(**names, version=str(version))  # type: ignore[return-value]


# -- pure mappings (every key checked against the pinned source) ---------------------------


def _section(config: ExperimentConfig) -> TensorRTConfig:
    section = config.tensorrt
    if section is None:  # pragma: no cover - ExperimentConfig fills the backend's section
        raise ValueError("backend: tensorrt needs a tensorrt: section")
    return section


def build_kwargs(config: ExperimentConfig) -> dict[str, Any]:
    """What the engine build passes to TensorRT-LLM, from the build settings only.

    `llm`: keyword arguments of the engine-flow `LLM(...)` besides `model`;
    `build_config`: `BuildConfig(...)` fields; `quant_config`: `QuantConfig(...)`
    fields with QuantAlgo member names as strings, or None (no quantisation).
    A build limit left None is left to TensorRT-LLM's default (it then depends only
    on the model and the TensorRT-LLM version, both in the engine cache key).
    """
    s = _section(config)
    llm: dict[str, Any] = {
        "dtype": s.dtype,
        "tensor_parallel_size": s.tensor_parallel_size,
        "pipeline_parallel_size": s.pipeline_parallel_size,
    }
    build: dict[str, Any] = {"max_batch_size": s.max_batch_size}
    for name in ("max_num_tokens", "max_input_len", "max_seq_len"):
        value = getattr(s, name)
        if value is not None:
            build[name] = value
    quant: dict[str, Any] | None = None
    algo, kv_algo = QUANT_ALGOS[s.quantization], KV_CACHE_QUANT_ALGOS[s.kv_cache_quantization]
    if algo is not None or kv_algo is not None:
        quant = {}
        if algo is not None:
            quant["quant_algo"] = algo
        if kv_algo is not None:
            quant["kv_cache_quant_algo"] = kv_algo
    return {"llm": llm, "build_config": build, "quant_config": quant}


def runtime_kwargs(config: ExperimentConfig) -> dict[str, Any]:
    """Keyword arguments of the engine-flow `LLM(...)` when opening a built engine:
    runtime settings only (the engine's own config.json supplies everything else).
    `kv_cache_config` holds `KvCacheConfig(...)` fields."""
    s = _section(config)
    return {
        "kv_cache_config": {
            "enable_block_reuse": s.kv_cache_enable_block_reuse,
            "free_gpu_memory_fraction": s.kv_cache_free_gpu_memory_fraction,
        }
    }


def sampling_kwargs(config: ExperimentConfig) -> dict[str, Any]:
    """`SamplingParams(...)` fields for every request.

    Exactly `max_output_tokens` tokens when ignore_eos. temperature 0 = greedy:
    no sampling field is set, which TensorRT-LLM treats as greedy. Otherwise
    temperature, top_p and top_k (0 = no top-k filtering in both llem and
    TensorRT-LLM) and the seed. Text is not needed, so detokenisation is off.
    """
    sampling = config.sampling
    kw: dict[str, Any] = {
        "max_tokens": config.max_output_tokens,
        "ignore_eos": config.ignore_eos,
        "detokenize": False,
    }
    if sampling.temperature > 0:
        kw.update(temperature=sampling.temperature, top_p=sampling.top_p,
                  top_k=sampling.top_k, seed=config.seed)
    return kw


def check_workload_fits(config: ExperimentConfig) -> None:
    """Refuse a workload the engine's limits cannot take, before building or loading.

    TensorRT-LLM rejects a prompt longer than the engine's max_input_len, a prompt
    plus max_tokens beyond max_seq_len, and (chunked prefill being off) a prompt
    longer than max_num_tokens.
    """
    s = _section(config)
    n_in, n_out = config.max_input_tokens, config.max_output_tokens
    max_input_len = s.max_input_len or TRT_DEFAULT_MAX_INPUT_LEN
    if n_in > max_input_len:
        where = "" if s.max_input_len else f" (TensorRT-LLM's default, {TRT_DEFAULT_MAX_INPUT_LEN})"
        raise ValueError(
            f"max_input_tokens {n_in} exceeds the engine's max_input_len {max_input_len}{where}; "
            f"set tensorrt.max_input_len >= {n_in}"
        )
    max_num_tokens = s.max_num_tokens or TRT_DEFAULT_MAX_NUM_TOKENS
    if n_in > max_num_tokens:
        raise ValueError(
            f"max_input_tokens {n_in} exceeds the engine's max_num_tokens {max_num_tokens}; "
            f"set tensorrt.max_num_tokens >= {n_in}"
        )
    if s.max_seq_len is not None and n_in + n_out > s.max_seq_len:
        raise ValueError(
            f"max_input_tokens + max_output_tokens = {n_in + n_out} exceeds "
            f"tensorrt.max_seq_len {s.max_seq_len}; raise it or shorten the workload"
        )


def quant_config_object(api: TrtApi, quant: dict[str, Any] | None) -> Any:
    if quant is None:
        return None
    return api.QuantConfig(**{k: getattr(api.QuantAlgo, v) for k, v in quant.items()})


# -- phase 1: engine build ----------------------------------------------------------------


def build_engine(config: ExperimentConfig, model_path: str | Path, out_dir: str | Path,
                 api: TrtApi | None = None) -> dict[str, Any]:
    """Build the TensorRT engine for `config`'s build settings into `out_dir`
    (absent or empty) and return the build facts (also written to llem_build.json)."""
    if config.backend != "tensorrt":
        raise ValueError(f"build_engine: backend is '{config.backend}', not tensorrt")
    check_workload_fits(config)
    kw = build_kwargs(config)
    out = Path(out_dir)
    if out.exists() and any(out.iterdir()):
        raise ValueError(f"engine output directory {out} is not empty; give an empty or new one")
    out.mkdir(parents=True, exist_ok=True)
    api = api or load_api()
    model_path = Path(model_path)

    t0 = time.perf_counter()
    llm = api.LLM(
        model=str(model_path),
        **kw["llm"],
        build_config=api.BuildConfig(**kw["build_config"]),
        **({"quant_config": quant_config_object(api, kw["quant_config"])}
           if kw["quant_config"] is not None else {}),
    )
    try:
        llm.save(str(out))
    finally:
        llm.shutdown()
    seconds = time.perf_counter() - t0

    for name in _TOKENIZER_FILES:  # real files (a snapshot's symlinks are followed)
        src = model_path / name
        if src.is_file() and not (out / name).exists():
            shutil.copy2(src, out / name)
    n_params, counted = count_parameters(model_path)
    section = _section(config)
    facts = {
        "format": BUILD_FACTS_FORMAT,
        "build_seconds": round(seconds, 3),
        "tensorrt_llm_version": api.version,
        "model": config.model,
        "model_revision": config.model_revision,
        "model_path": str(model_path),
        "build_settings": section.build_settings(),
        "build_kwargs": kw,
        "n_parameters": n_params,
        "n_parameters_source": counted,
    }
    write_json_atomic(out / BUILD_FACTS_FILE, facts)
    return facts


def main_build(api: TrtApi | None = None) -> int:
    """`python -m llenergymeasure.backends.tensorrt build`: experiment from $LLEM_EXPERIMENT_JSON, engine
    into $LLEM_TRT_ENGINE_OUT. Exit 0 when built, 1 otherwise (the reason on stderr)."""
    try:
        raw = os.environ.get(contract.ENV_EXPERIMENT)
        if not raw:
            raise ValueError(f"{contract.ENV_EXPERIMENT} is not set: nothing to build")
        out = os.environ.get(ENV_TRT_ENGINE_OUT)
        if not out:
            raise ValueError(f"{ENV_TRT_ENGINE_OUT} is not set: no directory to write the engine to")
        config = ExperimentConfig.model_validate_json(raw)
        model_path = resolve_model(config.model, config.model_revision)
        facts = build_engine(config, model_path, out, api=api)
    except Exception as e:  # noqa: BLE001 - any failure is a failed build, said once
        print(f"llem: TensorRT-LLM engine build failed: {type(e).__name__}: {e}", file=sys.stderr)
        return contract.EXIT_FAILED
    print(json.dumps(facts, sort_keys=True))
    return contract.EXIT_OK


# -- phase 2: measured run ----------------------------------------------------------------


@dataclass
class _Request:
    token_ids: list[int]


@register_backend("tensorrt")
class TensorRTBackend:
    """Opens a prebuilt engine; a warm-up "batch" is max_batch_size requests (as many as
    the engine runs at once)."""

    def __init__(self, config: ExperimentConfig, api: TrtApi | None = None) -> None:
        self.config = config
        self.section = _section(config)
        self._api = api
        self.llm: TrtLLM | None = None
        self.engine_dir: Path | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _engine_dir(self) -> Path:
        value = os.environ.get(ENV_TRT_ENGINE_DIR)
        if not value:
            raise FileNotFoundError(
                f"{ENV_TRT_ENGINE_DIR} is not set: the TensorRT backend runs a prebuilt engine; "
                "build it first (python -m llenergymeasure.backends.tensorrt build, which llem runs for you)"
            )
        path = Path(value)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"{ENV_TRT_ENGINE_DIR}={value}: no TensorRT-LLM engine there (no config.json); "
                "build it first (python -m llenergymeasure.backends.tensorrt build)"
            )
        if not (path / BUILD_FACTS_FILE).is_file():
            raise FileNotFoundError(
                f"{ENV_TRT_ENGINE_DIR}={value}: no {BUILD_FACTS_FILE}; only engines built by "
                "python -m llenergymeasure.backends.tensorrt build can be measured (their build settings are known)"
            )
        return path

    def load(self) -> LoadedModel:
        check_workload_fits(self.config)
        engine_dir = self._engine_dir()
        facts = json.loads((engine_dir / BUILD_FACTS_FILE).read_text())
        want = self.section.build_settings()
        if facts.get("build_settings") != want:
            raise ValueError(
                f"the engine in {engine_dir} was built with {facts.get('build_settings')}, "
                f"but this experiment's build settings are {want}; rebuild the engine"
            )
        if facts.get("model") != self.config.model:
            raise ValueError(
                f"the engine in {engine_dir} was built from {facts.get('model')!r}, "
                f"not {self.config.model!r}; rebuild the engine"
            )
        api = self._api or load_api()
        tokenizer = (
            engine_dir if (engine_dir / "tokenizer_config.json").is_file()
            else resolve_model(self.config.model, self.config.model_revision)
        )
        kw = runtime_kwargs(self.config)
        self.llm = api.LLM(
            model=str(engine_dir),
            tokenizer=str(tokenizer),
            kv_cache_config=api.KvCacheConfig(**kw["kv_cache_config"]),
        )
        self.engine_dir = engine_dir
        self._api = api
        self._loop = asyncio.new_event_loop()
        engine_cfg = json.loads((engine_dir / "config.json").read_text())
        dtype = (engine_cfg.get("pretrained_config") or {}).get("dtype") or self.section.dtype
        return LoadedModel(
            model_path=str(facts.get("model_path", engine_dir)),
            n_parameters=int(facts.get("n_parameters", 0)),
            device=run_device(self.config.device),
            dtype=str(dtype),
            extra={
                "engine_dir": str(engine_dir),
                "tensorrt_llm_version": api.version,
                "engine_tensorrt_llm_version": facts.get("tensorrt_llm_version"),
                "engine_build_seconds": facts.get("build_seconds"),
                "n_parameters_source": facts.get("n_parameters_source"),
                "quant_config": facts.get("build_kwargs", {}).get("quant_config"),
                "kv_cache_config": kw["kv_cache_config"],
            },
        )

    def prepare(self, prompts: list[str]) -> list[_Request]:
        if self.llm is None:
            raise RuntimeError("prepare() before load()")
        tok = self.llm.tokenizer
        if tok is None:
            raise RuntimeError(f"the engine in {self.engine_dir} has no tokenizer")
        n = self.config.max_input_tokens
        return [_Request(token_ids=list(tok.encode(p))[:n]) for p in prompts]

    def _sampling_params(self) -> Any:
        assert self._api is not None
        return self._api.SamplingParams(**sampling_kwargs(self.config))

    def generate(self, prepared: list[_Request], max_batches: int | None = None) -> list[RequestRecord]:
        if self.llm is None or self._loop is None:
            raise RuntimeError("generate() before load()")
        if max_batches is not None:
            prepared = prepared[: max_batches * self.section.max_batch_size]
        # one SamplingParams per request (the LLM API fills in end_id etc. in place),
        # built before the first submission
        params = [self._sampling_params() for _ in prepared]
        return self._loop.run_until_complete(self._submit_all(prepared, params))

    async def _submit_all(self, prepared: list[_Request], params: list[Any]) -> list[RequestRecord]:
        assert self.llm is not None
        records = [RequestRecord(input_tokens=len(r.token_ids), submitted_s=0.0) for r in prepared]
        streams = []
        for req, sp, rec in zip(prepared, params, records):
            rec.submitted_s = time.perf_counter()
            # inside the running loop: the result then gets an asyncio queue
            streams.append(self.llm.generate_async(req.token_ids, sampling_params=sp, streaming=True))
        await asyncio.gather(*(_consume(s, r) for s, r in zip(streams, records)))
        return records

    def synchronize(self) -> None:
        """Nothing to wait for: the engine runs in TensorRT-LLM's executor process, and
        `generate()` returns only after every request's last token reached the host."""

    def run_warnings(self) -> list[AdapterWarning]:
        return []  # nothing this adapter sees go wrong is left unraised

    def close(self) -> None:
        if self.llm is not None:
            self.llm.shutdown()
            self.llm = None
        if self._loop is not None:
            self._loop.close()
            self._loop = None


async def _consume(stream: TrtStream, record: RequestRecord) -> None:
    """Stamp each new token of one streamed request as it reaches the host."""
    async for out in stream:
        now = time.perf_counter()
        ids = out.outputs[0].token_ids  # cumulative: every token so far
        new = len(ids) - len(record.token_times_s)
        if new > 0:  # several tokens can arrive in one update: same arrival time
            record.token_times_s.extend([now] * new)
            record.token_ids.extend(ids[-new:])


def main(argv: list[str]) -> int:
    if argv[1:] == ["build"]:
        return main_build()
    print("usage: python -m llenergymeasure.backends.tensorrt build", file=sys.stderr)
    return contract.EXIT_FAILED

