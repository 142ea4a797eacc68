"""Every TensorRT-LLM name the adapter can produce exists in the pinned source.

Reads the TensorRT-LLM Python source tree from $LLEM_TRTLLM_SOURCE (the directory
holding `tensorrt_llm/`) with `ast` (nothing is imported or run) and checks the
keyword and field names that backends/tensorrt/backend.py's pure functions emit, with
every option set, plus the import paths, methods and parameters the adapter uses.
Skipped when the variable is unset or the directory is missing.
"""

from __future__ import annotations

import ast
import os
import typing
from functools import cache
from pathlib import Path

import pytest

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.tensorrt.config import TensorRTConfig
from llenergymeasure.backends.tensorrt.backend import (
    KV_CACHE_QUANT_ALGOS,
    LLM_METHODS_USED,
    QUANT_ALGOS,
    TRT_DEFAULT_MAX_INPUT_LEN,
    TRT_DEFAULT_MAX_NUM_TOKENS,
    TRTLLM_IMPORTS,
    TRTLLM_VERSION_MODULE,
    build_kwargs,
    runtime_kwargs,
    sampling_kwargs,
)

ENV = "LLEM_TRTLLM_SOURCE"

LLM_PY = "tensorrt_llm/llmapi/llm.py"
LLM_ARGS_PY = "tensorrt_llm/llmapi/llm_args.py"
BUILDER_PY = "tensorrt_llm/builder.py"
MODELING_UTILS_PY = "tensorrt_llm/models/modeling_utils.py"
MODE_PY = "tensorrt_llm/quantization/mode.py"
SAMPLING_PY = "tensorrt_llm/sampling_params.py"
RESULT_PY = "tensorrt_llm/executor/result.py"


def _root() -> Path:
    value = os.environ.get(ENV)
    if not value:
        pytest.skip(f"{ENV} is not set: point it at a TensorRT-LLM source tree (holding tensorrt_llm/)")
    root = Path(value)
    if not (root / "tensorrt_llm").is_dir():
        pytest.skip(f"{ENV}={value} has no tensorrt_llm/ directory")
    return root


@cache
def _parse(root: Path, rel: str) -> ast.Module:
    path = root / rel
    assert path.is_file(), f"{rel} is missing from {root}"
    return ast.parse(path.read_text(), filename=str(path))


def _module_file(root: Path, module: str) -> str:
    rel = module.replace(".", "/")
    return f"{rel}/__init__.py" if (root / rel).is_dir() else f"{rel}.py"


def _class(root: Path, rel: str, name: str) -> ast.ClassDef:
    for node in _parse(root, rel).body:
        if isinstance(node, ast.ClassDef) and node.name == name:
            return node
    raise AssertionError(f"class {name} not found in {rel}")


def _init_fields(cls: ast.ClassDef) -> set[str]:
    """Constructor fields of a dataclass / pydantic model: annotated class attributes,
    minus private ones and dataclass `field(init=False)`."""
    names = set()
    for node in cls.body:
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        if name.startswith("_"):
            continue
        v = node.value
        if (isinstance(v, ast.Call) and getattr(v.func, "id", None) == "field"
                and any(k.arg == "init" and isinstance(k.value, ast.Constant)
                        and k.value.value is False for k in v.keywords)):
            continue
        names.add(name)
    return names


def _default(cls: ast.ClassDef, field_name: str) -> object:
    for node in cls.body:
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and node.target.id == field_name):
            return ast.literal_eval(node.value)
    raise AssertionError(f"{cls.name}.{field_name} not found")


def _enum_members(cls: ast.ClassDef) -> set[str]:
    return {t.id for node in cls.body if isinstance(node, ast.Assign)
            for t in node.targets if isinstance(t, ast.Name)}


def _methods(cls: ast.ClassDef) -> dict[str, ast.FunctionDef | ast.AsyncFunctionDef]:
    return {n.name: n for n in cls.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))}


def _params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = fn.args
    return [p.arg for p in [*a.posonlyargs, *a.args, *a.kwonlyargs]][1:]  # without self


def _bases(cls: ast.ClassDef) -> set[str]:
    return {ast.unparse(b) for b in cls.bases}


def _defines(root: Path, rel: str, name: str) -> bool:
    for node in _parse(root, rel).body:
        if isinstance(node, (ast.ClassDef, ast.FunctionDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((alias.asname or alias.name) == name for alias in node.names):
                return True
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == name for t in node.targets):
            return True
    return False


def _options(field_name: str) -> list[str]:
    return list(typing.get_args(TensorRTConfig.model_fields[field_name].annotation))


def _everything_set(quantization: str, kv: str) -> ExperimentConfig:
    return ExperimentConfig.model_validate({
        "model": "llem/tiny-llama", "backend": "tensorrt", "seed": 7, "ignore_eos": False,
        "sampling": {"temperature": 0.8, "top_p": 0.9, "top_k": 50},
        "tensorrt": {
            "dtype": "bfloat16", "max_batch_size": 16, "max_num_tokens": 4096,
            "max_input_len": 1024, "max_seq_len": 2048, "tensor_parallel_size": 2,
            "pipeline_parallel_size": 2, "quantization": quantization,
            "kv_cache_quantization": kv, "kv_cache_enable_block_reuse": False,
            "kv_cache_free_gpu_memory_fraction": 0.5,
        },
    })


def _llm_kwargs_allowed(root: Path) -> set[str]:
    """What the engine-flow LLM accepts: _TrtLLM.__init__'s named parameters, and as
    **kwargs the fields of TrtLlmArgs (BaseLLM validates kwargs against them)."""
    trt_llm = _class(root, LLM_PY, "_TrtLLM")
    init = _methods(trt_llm)["__init__"]
    assert init.args.kwarg is not None, "_TrtLLM.__init__ no longer takes **kwargs"
    trt_args = _class(root, LLM_ARGS_PY, "TrtLlmArgs")
    assert "BaseLlmArgs" in _bases(trt_args)
    return (set(_params(init)) | _init_fields(trt_args)
            | _init_fields(_class(root, LLM_ARGS_PY, "BaseLlmArgs")))


# -- import paths -----------------------------------------------------------------------------


def test_every_import_resolves_in_the_source() -> None:
    root = _root()
    for name, (module, attr) in TRTLLM_IMPORTS.items():
        rel = _module_file(root, module)
        assert _defines(root, rel, attr), f"{name}: {module} does not define {attr} ({rel})"
    assert _defines(root, _module_file(root, TRTLLM_VERSION_MODULE), "__version__")


def test_engine_flow_llm_is_the_tensorrt_llm_class() -> None:
    """`tensorrt_llm._tensorrt_engine.LLM` is llmapi.llm._TrtLLM (the TensorRT-engine
    flow), not the PyTorch-backend LLM."""
    root = _root()
    init = _parse(root, "tensorrt_llm/_tensorrt_engine/__init__.py")
    aliases = {(n.module, a.name, a.asname) for n in init.body if isinstance(n, ast.ImportFrom)
               for a in n.names}
    assert ("tensorrt_llm.llmapi.llm", "_TrtLLM", "LLM") in aliases
    assert "BaseLLM" in _bases(_class(root, LLM_PY, "_TrtLLM"))


# -- what build_kwargs / runtime_kwargs / sampling_kwargs produce -------------------------------


@pytest.mark.parametrize("quantization", _options("quantization"))
@pytest.mark.parametrize("kv", _options("kv_cache_quantization"))
def test_build_kwargs_exist(quantization: str, kv: str) -> None:
    root = _root()
    kw = build_kwargs(_everything_set(quantization, kv))

    llm_kwargs = {"model", *kw["llm"], "build_config"} | ({"quant_config"} if kw["quant_config"] else set())
    assert llm_kwargs <= _llm_kwargs_allowed(root), llm_kwargs - _llm_kwargs_allowed(root)

    build_fields = _init_fields(_class(root, BUILDER_PY, "BuildConfig"))
    assert set(kw["build_config"]) <= build_fields, set(kw["build_config"]) - build_fields
    assert set(kw["build_config"]) == {"max_batch_size", "max_num_tokens", "max_input_len", "max_seq_len"}

    if kw["quant_config"] is not None:
        quant_fields = _init_fields(_class(root, MODELING_UTILS_PY, "QuantConfig"))
        assert set(kw["quant_config"]) <= quant_fields
        members = _enum_members(_class(root, MODE_PY, "QuantAlgo"))
        assert set(kw["quant_config"].values()) <= members


def test_quant_tables_name_real_quant_algos() -> None:
    root = _root()
    members = _enum_members(_class(root, MODE_PY, "QuantAlgo"))
    for table in (QUANT_ALGOS, KV_CACHE_QUANT_ALGOS):
        used = {v for v in table.values() if v is not None}
        assert used <= members, used - members
    # the KV-cache ones must be in TensorRT-LLM's own list of KV-cache algorithms
    kv_list = next(n.value for n in _parse(root, MODE_PY).body if isinstance(n, ast.Assign)
                   and any(getattr(t, "id", None) == "KV_CACHE_QUANT_ALGO_LIST" for t in n.targets))
    kv_allowed = {e.attr for e in kv_list.elts if isinstance(e, ast.Attribute)}
    assert {v for v in KV_CACHE_QUANT_ALGOS.values() if v} <= kv_allowed


def test_runtime_kwargs_exist() -> None:
    root = _root()
    kw = runtime_kwargs(_everything_set("none", "none"))
    assert {"model", "tokenizer", *kw} <= _llm_kwargs_allowed(root)
    kv_fields = _init_fields(_class(root, LLM_ARGS_PY, "KvCacheConfig"))
    assert set(kw["kv_cache_config"]) <= kv_fields, set(kw["kv_cache_config"]) - kv_fields
    assert set(kw["kv_cache_config"]) == {"enable_block_reuse", "free_gpu_memory_fraction"}


def test_sampling_kwargs_exist() -> None:
    root = _root()
    fields = _init_fields(_class(root, SAMPLING_PY, "SamplingParams"))
    sampled = sampling_kwargs(_everything_set("none", "none"))
    assert set(sampled) == {"max_tokens", "ignore_eos", "detokenize", "temperature", "top_p",
                            "top_k", "seed"}
    assert set(sampled) <= fields, set(sampled) - fields


def test_build_config_defaults_the_workload_check_assumes() -> None:
    build = _class(_root(), BUILDER_PY, "BuildConfig")
    assert _default(build, "max_input_len") == TRT_DEFAULT_MAX_INPUT_LEN
    assert _default(build, "max_num_tokens") == TRT_DEFAULT_MAX_NUM_TOKENS


def test_build_config_has_no_optimisation_level() -> None:
    """Why TensorRTConfig has no builder optimisation level: nothing in BuildConfig sets
    TensorRT's. If this fails, add the setting (and it joins the engine cache key)."""
    fields = _init_fields(_class(_root(), BUILDER_PY, "BuildConfig"))
    assert not {f for f in fields if "opt_level" in f or "builder_opt" in f or "optimization" in f}


# -- methods called and the streaming result they return ------------------------------------------


def test_methods_called_exist_with_those_parameters() -> None:
    root = _root()
    methods = {**_methods(_class(root, LLM_PY, "BaseLLM")), **_methods(_class(root, LLM_PY, "_TrtLLM"))}
    for name, used in LLM_METHODS_USED.items():
        assert name in methods, f"LLM.{name} not found"
        params = _params(methods[name])
        assert set(used) <= set(params), (name, set(used) - set(params))
        if used:
            assert params[0] == used[0], f"LLM.{name}: first parameter is {params[0]}, not {used[0]}"
    base = _class(root, LLM_PY, "BaseLLM")
    getters = [n for n in base.body if isinstance(n, ast.FunctionDef) and n.name == "tokenizer"
               and any(ast.unparse(d) == "property" for d in n.decorator_list)]
    assert getters, "BaseLLM.tokenizer is not a property"


def test_streamed_results_iterate_asynchronously_with_cumulative_token_ids() -> None:
    root = _root()
    assert "GenerationResult" in _bases(_class(root, LLM_PY, "RequestOutput"))
    gen = _methods(_class(root, RESULT_PY, "GenerationResult"))
    assert "__aiter__" in gen and isinstance(gen["__anext__"], ast.AsyncFunctionDef)
    assert "token_ids" in _init_fields(_class(root, RESULT_PY, "CompletionOutput"))
