"""The vLLM names backends/vllm/backend.py uses exist in the pinned vLLM release.

vLLM cannot run here (it needs a CUDA GPU), so this reads its source instead:
the PyPI sdist of the version in the pinned image (vllm/vllm-openai:v0.31.0) is
downloaded once, checked against its SHA-256, and only the files below are
extracted into the cache ($LLEM_CACHE_DIR/api-sources, else
~/.cache/llenergymeasure/api-sources). Later runs read the extracted files and
take well under a second. Without network access on the first run, the tests
skip and say why. Everything is parsed with `ast`; nothing of vLLM is imported.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import os
import shutil
import tarfile
import tempfile
import urllib.request
from functools import cache
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import pytest

import llenergymeasure.backends.vllm.backend as adapter
from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.decoding import decoding_for
from llenergymeasure.backends.vllm.config import VLLMConfig

VLLM_VERSION = "0.31.0"
SDIST_URL = (
    "https://files.pythonhosted.org/packages/96/89/"
    "11460eaeb96e636f716657d460a6daebc7ddbcd631dd6799f232cae25771/vllm-0.31.0.tar.gz"
)
SDIST_SHA256 = "dde46f1efbe846e5bd0c5c4ec6ec71842c42254c7ff3d9bebb2a57028715d380"
TOP = f"vllm-{VLLM_VERSION}"

LLM_PY = "vllm/entrypoints/llm.py"
ARG_UTILS = "vllm/engine/arg_utils.py"
SAMPLING = "vllm/sampling_params.py"
ENGINE = "vllm/v1/engine/llm_engine.py"
LORA_REQUEST = "vllm/lora/request.py"
INPUTS_LLM = "vllm/inputs/llm.py"
INPUTS_INIT = "vllm/inputs/__init__.py"
OUTPUTS = "vllm/outputs.py"
TOKENIZER = "vllm/tokenizers/protocol.py"
VLLM_INIT = "vllm/__init__.py"
CFG_CACHE = "vllm/config/cache.py"
CFG_LORA = "vllm/config/lora.py"
CFG_MODEL = "vllm/config/model.py"
CFG_SCHED = "vllm/config/scheduler.py"
CFG_PARALLEL = "vllm/config/parallel.py"
CFG_VLLM = "vllm/config/vllm.py"
QUANT = "vllm/model_executor/layers/quantization/__init__.py"
CORE_IO = "vllm/v1/engine/__init__.py"
CORE_CLIENT = "vllm/v1/engine/core_client.py"
NEEDED = ("PKG-INFO", LLM_PY, ARG_UTILS, SAMPLING, ENGINE, LORA_REQUEST, INPUTS_LLM, INPUTS_INIT,
          OUTPUTS, TOKENIZER, VLLM_INIT, CFG_CACHE, CFG_LORA, CFG_MODEL, CFG_SCHED,
          CFG_PARALLEL, CFG_VLLM, QUANT, CORE_IO, CORE_CLIENT)

# Read at import (collection), before conftest points LLEM_CACHE_DIR at a per-session
# temporary directory, so that the download is cached across sessions.
_USER_CACHE = os.environ.get("LLEM_CACHE_DIR")


def api_sources_dir() -> Path:
    base = Path(_USER_CACHE).expanduser() if _USER_CACHE else Path.home() / ".cache" / "llenergymeasure"
    return base / "api-sources"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _download(dest: Path) -> None:
    fd, tmp = tempfile.mkstemp(prefix=".vllm-sdist.", dir=dest.parent)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(SDIST_URL, timeout=60) as resp:
            shutil.copyfileobj(resp, out)
        got = _sha256(Path(tmp))
        if got != SDIST_SHA256:
            pytest.fail(f"{SDIST_URL}: SHA-256 {got}, expected the pinned {SDIST_SHA256}")
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def ensure_sources() -> Path:
    """The extracted files of the pinned sdist (downloading it on first use)."""
    root = api_sources_dir()
    out = root / TOP
    stamp = out / ".llem-extracted.json"
    want = {"sha256": SDIST_SHA256, "files": sorted(NEEDED)}
    if stamp.is_file() and json.loads(stamp.read_text()) == want:
        return out
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        pytest.skip(f"cannot create {root} for the vLLM {VLLM_VERSION} sources: {e}")
    sdist = root / f"{TOP}.tar.gz"
    if not sdist.is_file() or _sha256(sdist) != SDIST_SHA256:
        try:
            _download(sdist)
        except OSError as e:  # URLError, timeouts and refused connections are OSErrors
            pytest.skip(f"could not download the vLLM {VLLM_VERSION} sdist ({e}); "
                        "these checks need it once, then it is cached")
    tmp_out = Path(tempfile.mkdtemp(prefix=f".{TOP}.", dir=root))
    try:
        with tarfile.open(sdist, "r:gz") as tar:
            for rel in NEEDED:
                member = tar.getmember(f"{TOP}/{rel}")
                data = tar.extractfile(member)
                assert data is not None, rel
                target = tmp_out / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data.read())
        (tmp_out / stamp.name).write_text(json.dumps(want))
        shutil.rmtree(out, ignore_errors=True)
        os.replace(tmp_out, out)
    finally:
        shutil.rmtree(tmp_out, ignore_errors=True)
    return out


@pytest.fixture(scope="module")
def src() -> Path:
    return ensure_sources()


# -- ast helpers ---------------------------------------------------------------------------


@cache
def _tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def tree(src: Path, rel: str) -> ast.Module:
    return _tree(src / rel)


def class_def(src: Path, rel: str, name: str) -> ast.ClassDef:
    for node in tree(src, rel).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"{rel}: no class {name}")


def method(cls: ast.ClassDef, name: str) -> ast.FunctionDef:
    for node in cls.body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            return node
    raise AssertionError(f"class {cls.name}: no method {name}")


def params(fn: ast.FunctionDef) -> list[str]:
    a = fn.args
    return [p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]][1:]  # without self


def positional(fn: ast.FunctionDef) -> list[str]:
    return [p.arg for p in [*fn.args.posonlyargs, *fn.args.args]][1:]


def fields(cls: ast.ClassDef) -> set[str]:
    """Annotated class attributes: dataclass, msgspec.Struct, TypedDict and pydantic fields."""
    return {n.target.id for n in cls.body
            if isinstance(n, ast.AnnAssign) and isinstance(n.target, ast.Name)}


def self_attrs(fn: ast.FunctionDef) -> set[str]:
    out = set()
    for node in ast.walk(fn):
        targets = node.targets if isinstance(node, ast.Assign) else (
            [node.target] if isinstance(node, ast.AnnAssign) else [])
        for t in targets:
            if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                out.add(t.attr)
    return out


def literal_values(src: Path, rel: str, name: str) -> set[Any]:
    for node in tree(src, rel).body:
        if (isinstance(node, ast.Assign) and len(node.targets) == 1
                and isinstance(node.targets[0], ast.Name) and node.targets[0].id == name):
            sub = node.value
            assert isinstance(sub, ast.Subscript) and ast.unparse(sub.value) == "Literal", name
            elts = sub.slice.elts if isinstance(sub.slice, ast.Tuple) else [sub.slice]
            return {ast.literal_eval(e) for e in elts}
    raise AssertionError(f"{rel}: no {name} = Literal[...]")


def enum_members(cls: ast.ClassDef) -> set[str]:
    return {t.id for n in cls.body if isinstance(n, ast.Assign)
            for t in n.targets if isinstance(t, ast.Name)}


# -- configs that make the adapter produce every key it can ------------------------------------

EVERY_VLLM_OPTION: dict[str, Any] = {
    "dtype": "bfloat16", "max_num_seqs": 64, "max_num_batched_tokens": 8192,
    "gpu_memory_utilization": 0.8, "enable_prefix_caching": True, "enable_chunked_prefill": True,
    "kv_cache_dtype": "fp8", "quantization": "fp8", "tensor_parallel_size": 2,
    "pipeline_parallel_size": 2, "enforce_eager": True, "max_model_len": 4096,
    "kv_cache_memory_bytes": 2**30,
}


def full_config(tmp_path: Path, **over: Any) -> ExperimentConfig:
    adapter_dir = tmp_path / "adapter"
    adapter_dir.mkdir(exist_ok=True)
    (adapter_dir / "adapter_config.json").write_text(json.dumps({"r": 16}))
    return ExperimentConfig.model_validate({
        "model": "m", "backend": "vllm", "lora_adapter": str(adapter_dir),
        "vllm": EVERY_VLLM_OPTION, **over,
    })


def test_every_option_is_in_the_full_config() -> None:
    assert set(EVERY_VLLM_OPTION) == set(VLLMConfig.model_fields)
    assert all(v is not None for v in EVERY_VLLM_OPTION.values())


def test_sdist_is_the_pinned_version(src: Path) -> None:
    info = (src / "PKG-INFO").read_text()
    assert f"\nVersion: {VLLM_VERSION}\n" in info


# -- LLM(...) / EngineArgs --------------------------------------------------------------------


def test_engine_kwargs_are_llm_or_engineargs_names(src: Path, tmp_path: Path) -> None:
    kw = adapter.engine_kwargs(full_config(tmp_path), "/models/m")
    assert {"enable_lora", "max_lora_rank", "max_loras", *EVERY_VLLM_OPTION} <= set(kw)
    init = method(class_def(src, LLM_PY, "LLM"), "__init__")
    assert positional(init)[0] == "model"
    assert init.args.kwarg is not None  # the rest goes on to EngineArgs(**kwargs)
    engine_args = fields(class_def(src, ARG_UTILS, "EngineArgs"))
    unknown = set(kw) - set(params(init)) - engine_args
    assert not unknown, f"not parameters of vLLM {VLLM_VERSION} LLM() or EngineArgs: {unknown}"
    # LLM.__init__ passes its own parameters to EngineArgs too; every one must be a field
    assert set(kw) <= engine_args


def test_lora_ranks_match(src: Path) -> None:
    assert set(adapter.VLLM_MAX_LORA_RANKS) == literal_values(src, CFG_LORA, "MaxLoRARanks")


def test_config_literals_are_subsets_of_vllms(src: Path) -> None:
    def literal_args(tp: Any) -> set[Any]:  # Literal[...] | None -> the literal values
        if get_origin(tp) is Literal:
            return set(get_args(tp))
        return set().union(*(literal_args(a) for a in get_args(tp)))

    def choices(name: str) -> set[Any]:
        return literal_args(VLLMConfig.model_fields[name].annotation)

    kv = choices("kv_cache_dtype")
    quant = choices("quantization")
    dtype = choices("dtype")
    assert kv and quant and dtype
    assert kv <= literal_values(src, CFG_CACHE, "CacheDType")
    assert quant <= literal_values(src, QUANT, "QuantizationMethods")
    assert dtype <= literal_values(src, CFG_MODEL, "ModelDType")


# -- SamplingParams ------------------------------------------------------------------------


@pytest.mark.parametrize("over", [
    {}, {"ignore_eos": False}, {"sampling": {"temperature": 0.8, "top_p": 0.9, "top_k": 40}},
])
def test_sampling_kwargs_are_samplingparams_fields(src: Path, tmp_path: Path, over: dict) -> None:
    kw = adapter.sampling_kwargs(decoding_for(full_config(tmp_path, **over), tmp_path, 2))
    sp = fields(class_def(src, SAMPLING, "SamplingParams"))
    assert set(kw) <= sp, set(kw) - sp
    assert kw["output_kind"] in enum_members(class_def(src, SAMPLING, "RequestOutputKind"))


# -- engine, requests and outputs ------------------------------------------------------------


def _protocol_methods() -> dict[str, list[str]]:
    out = {}
    for name, fn in vars(adapter.VllmEngine).items():
        if inspect.isfunction(fn) and not name.startswith("_"):
            out[name] = list(inspect.signature(fn).parameters)[1:]
    return out


def test_engine_protocol_matches_llmengine(src: Path) -> None:
    engine = class_def(src, ENGINE, "LLMEngine")
    protocol = _protocol_methods()
    assert set(protocol) == {"get_tokenizer", "add_request", "step", "has_unfinished_requests",
                             "abort_request", "reset_prefix_cache"}
    for name, ours in protocol.items():
        theirs = positional(method(engine, name))
        # same names in the same positions, so positional and keyword calls both bind
        assert theirs[: len(ours)] == ours, (name, theirs, ours)
        required = len(theirs) - len(method(engine, name).args.defaults)
        assert required <= len(ours), (name, "vLLM requires more arguments")


def test_what_load_reads_exists(src: Path) -> None:
    assert "llm_engine" in self_attrs(method(class_def(src, LLM_PY, "LLM"), "__init__"))
    engine = class_def(src, ENGINE, "LLMEngine")
    assert {"vllm_config", "model_config"} <= self_attrs(method(engine, "__init__"))
    assert positional(method(engine, "add_lora")) == ["lora_request"]
    assert {"scheduler_config", "cache_config", "parallel_config", "model_config"} <= fields(
        class_def(src, CFG_VLLM, "VllmConfig"))
    assert {"max_num_seqs", "max_num_batched_tokens", "enable_chunked_prefill"} <= fields(
        class_def(src, CFG_SCHED, "SchedulerConfig"))
    assert {"enable_prefix_caching", "cache_dtype"} <= fields(class_def(src, CFG_CACHE, "CacheConfig"))
    assert {"max_model_len", "dtype", "quantization", "enforce_eager"} <= fields(
        class_def(src, CFG_MODEL, "ModelConfig"))
    assert {"tensor_parallel_size", "pipeline_parallel_size"} <= fields(
        class_def(src, CFG_PARALLEL, "ParallelConfig"))


def test_core_stamps_read_what_step_reads(src: Path) -> None:
    """CoreStamps wraps `engine_core.get_output()`, the call step() takes each batch of
    outputs from, and reads the batch's `timestamp` (the core's time.monotonic())."""
    engine = class_def(src, ENGINE, "LLMEngine")
    assert "engine_core" in self_attrs(method(engine, "__init__"))
    assert "self.engine_core.get_output()" in ast.unparse(method(engine, "step"))
    assert "timestamp" in fields(class_def(src, CORE_IO, "EngineCoreOutputs"))
    assert "time.monotonic()" in ast.unparse(class_def(src, CORE_IO, "EngineCoreOutputs"))
    for client in ("InprocClient", "SyncMPClient"):
        method(class_def(src, CORE_CLIENT, client), "get_output")


def test_cache_config_has_kv_cache_memory_bytes(src: Path) -> None:
    assert "kv_cache_memory_bytes" in fields(class_def(src, CFG_CACHE, "CacheConfig"))


def test_imports_exist(src: Path) -> None:
    exported = ast.literal_eval(next(
        n.value for n in tree(src, VLLM_INIT).body
        if isinstance(n, ast.Assign) and ast.unparse(n.targets[0]) == "MODULE_ATTRS"))
    assert exported["LLM"] == ".entrypoints.llm:LLM"
    assert exported["SamplingParams"] == ".sampling_params:SamplingParams"
    class_def(src, LORA_REQUEST, "LoRARequest")
    class_def(src, SAMPLING, "RequestOutputKind")
    assert "__version__" in ast.unparse(tree(src, VLLM_INIT))


def test_lora_request_fields(src: Path, tmp_path: Path) -> None:
    kw = adapter.lora_request_kwargs(full_config(tmp_path))
    assert kw is not None
    assert set(kw) <= fields(class_def(src, LORA_REQUEST, "LoRARequest"))


def test_tokens_prompt_fields(src: Path) -> None:
    tp = class_def(src, INPUTS_LLM, "TokensPrompt")
    assert set(adapter.tokens_prompt([1, 2])) <= fields(tp)
    assert "TokensPrompt" in ast.unparse(tree(src, INPUTS_INIT))


def test_request_output_attributes(src: Path) -> None:
    ro = self_attrs(method(class_def(src, OUTPUTS, "RequestOutput"), "__init__"))
    assert {"request_id", "outputs", "finished"} <= ro
    assert "token_ids" in fields(class_def(src, OUTPUTS, "CompletionOutput"))


def test_tokenizer_encode_signature(src: Path) -> None:
    encode = method(class_def(src, TOKENIZER, "TokenizerLike"), "encode")
    assert {"truncation", "max_length", "add_special_tokens"} <= set(params(encode))
