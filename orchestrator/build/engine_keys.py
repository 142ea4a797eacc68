"""What identifies a TensorRT-LLM engine: its key material and key, and the model
revisions that go into it (also what a publication lock pins a model to).

Key material. In: the model (HF id or built-in name as written, a local
directory as its absolute path), its revision (HF commit, or a content hash of
the files), the TensorRT-LLM version, the GPU name and compute capability, and
`config.tensorrt.build_settings()` (dtype, batch/token limits, parallelism,
quantisation, KV-cache quantisation), plus a cache format
number. Out: everything that only changes how an existing engine is run:
`kv_cache_free_gpu_memory_fraction`, `kv_cache_enable_block_reuse`, sampling,
`ignore_eos`, `n_prompts`, `seed`, dataset, measurement, device index. Also
out: `max_input_tokens` / `max_output_tokens`. They shape the workload, not
the engine: a build setting left None means TensorRT-LLM's own default, which
depends only on the model config and TensorRT-LLM version (both in the key),
so a sweep over prompt or output length reuses one engine. Whether the
engine's limits fit the workload is a runtime check, not a key. If the
TensorRT backend ever derives `max_input_len` / `max_seq_len` from the
workload, it must write those values into `config.tensorrt` before calling
`key_material`; the key then follows them automatically. Anything else a
caller knows changes the engine (the TensorRT version, a build-recipe
version) goes in `key_material(..., extra={...})`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llenergymeasure.backends.atomic import write_json_atomic
from llenergymeasure.backends.config import ExperimentConfig, canonical_json
from llenergymeasure.backends.hashing import sha256_file
from llenergymeasure.backends.paths import cache_dir
from llenergymeasure.orchestrator.errors import UserError

CACHE_FORMAT = 1  # bump when the cache layout or the key material changes meaning
_COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


def walk_files(root: Path, *, follow_links: bool, error: type[Exception] = UserError) -> list[tuple[str, Path]]:
    """(relative posix path, path) of every regular file under root, sorted.

    Nothing is skipped silently: a broken link, a special file or a directory
    cycle is an error naming the path.
    """
    out: list[tuple[str, Path]] = []
    seen_dirs: set[tuple[int, int]] = set()

    def visit(d: Path, rel: str) -> None:
        st = d.stat()
        if (st.st_dev, st.st_ino) in seen_dirs:
            raise error(f"{d}: directory link cycle; cannot hash this directory")
        seen_dirs.add((st.st_dev, st.st_ino))
        for entry in sorted(os.scandir(d), key=lambda e: e.name):
            p = Path(entry.path)
            r = f"{rel}{entry.name}"
            if entry.is_symlink() and not follow_links:
                raise error(f"{p}: symbolic link in an engine directory; write real files")
            if entry.is_dir(follow_symlinks=True):
                visit(p, r + "/")
            elif entry.is_file(follow_symlinks=True):
                out.append((r, p))
            elif entry.is_symlink():
                raise error(f"{p}: broken symbolic link; fix or remove it")
            else:
                raise error(f"{p}: not a regular file or directory; remove it")
        seen_dirs.discard((st.st_dev, st.st_ino))

    visit(root, "")
    return sorted(out)


def directory_content_hash(root: Path) -> str:
    """SHA-256 over (relative path, sha256 of bytes) of every file, sorted by path.

    Symbolic links are followed (an HF snapshot is made of them). Per-file
    digests are memoised by (real path, size, mtime, ctime, inode), as git's index
    does, so re-hashing an unchanged multi-gigabyte model directory costs a stat
    per file.
    """
    memo = _HashMemo.load()
    lines = []
    for rel, p in walk_files(Path(root), follow_links=True):
        lines.append(f"{rel}\0{memo.digest(p)}\n")
    memo.save()
    return hashlib.sha256("".join(lines).encode("utf-8")).hexdigest()


class _HashMemo:
    """Per-file sha256 memo keyed by stat identity; a miss just hashes again."""

    def __init__(self, path: Path, data: dict[str, list[Any]]) -> None:
        self.path, self.data, self.dirty = path, data, False

    @classmethod
    def load(cls) -> _HashMemo:
        path = cache_dir() / "file-hashes.json"
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict):
                data = {}
        except (OSError, ValueError):
            data = {}
        return cls(path, data)

    def digest(self, p: Path) -> str:
        real = os.path.realpath(p)
        st = os.stat(real)
        ident = [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]
        hit = self.data.get(real)
        if isinstance(hit, list) and len(hit) == 5 and hit[:4] == ident:
            return str(hit[4])
        digest = sha256_file(Path(real))
        self.data[real] = [*ident, digest]
        self.dirty = True
        return digest

    def save(self) -> None:
        if not self.dirty:
            return
        # Keep only files that still exist: the memo must not grow forever.
        self.data = {k: v for k, v in self.data.items() if os.path.exists(k)}
        with contextlib.suppress(OSError):  # a read-only cache just hashes again next time
            write_json_atomic(self.path, self.data)


def revision_of(model: str) -> str:
    """What exactly `model` is, as a string that changes whenever its weights do.

    HF id: the commit hash of its cached snapshot. Local directory or built-in
    llem model: `sha256:<directory_content_hash>`.
    """
    from llenergymeasure.backends.models import BUILTIN_MODELS, ModelNotFound, resolve_model

    try:
        path = resolve_model(model)
    except ModelNotFound as e:
        raise UserError(str(e)) from None
    local = Path(model).expanduser()
    if model not in BUILTIN_MODELS and not local.is_dir() and _COMMIT_RE.match(path.name) \
            and path.parent.name == "snapshots":
        return path.name
    return "sha256:" + directory_content_hash(path)


def gpu_identity(index: int = 0, uuid: str | None = None) -> dict[str, Any]:
    """Name and CUDA compute capability ("9.0") of one GPU, read through NVML.

    `index` is the NVML index; pass `uuid` instead where CUDA_VISIBLE_DEVICES
    or a container renumbers GPUs. Without NVML or a GPU:
    {"name": "none", "compute_capability": None}.
    """
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception:  # noqa: BLE001 - library missing, no driver, no GPU
        return {"name": "none", "compute_capability": None}
    try:
        handle = (pynvml.nvmlDeviceGetHandleByUUID(uuid) if uuid is not None
                  else pynvml.nvmlDeviceGetHandleByIndex(index))
        name = pynvml.nvmlDeviceGetName(handle)
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
    except pynvml.NVMLError:
        return {"name": "none", "compute_capability": None}
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return {"name": name.decode() if isinstance(name, bytes) else str(name),
            "compute_capability": f"{major}.{minor}"}


def _model_id(model: str) -> str:
    from llenergymeasure.backends.models import BUILTIN_MODELS

    if model in BUILTIN_MODELS:
        return model
    local = Path(model).expanduser()
    return str(local.resolve()) if local.is_dir() else model


def key_material(config: ExperimentConfig, revision: str, trtllm_version: str, gpu: Mapping[str, Any],
                 *, extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Everything that changes a TensorRT-LLM engine, and nothing else (see the module doc)."""
    if config.backend != "tensorrt" or config.tensorrt is None:
        raise UserError(f"an engine key needs backend: tensorrt (this config has backend: {config.backend})")
    if not revision or not trtllm_version:
        raise UserError("an engine key needs the model revision and the TensorRT-LLM version")
    material: dict[str, Any] = {
        "cache_format": CACHE_FORMAT,
        "model": _model_id(config.model),
        "revision": revision,
        "tensorrt_llm": trtllm_version,
        "gpu": {"name": gpu.get("name"), "compute_capability": gpu.get("compute_capability")},
        "build": config.tensorrt.build_settings(),
    }
    if extra:
        material["extra"] = dict(extra)
    return material


def engine_key(material: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical_json(material).encode("utf-8")).hexdigest()
