"""THE backend table: one row per backend, and every list of backends derives from it
(the experiment config's sections, the adapter registry, images, `llem config`,
preflight checks, the CLI's choices).

Adding a backend is: its package `backends/<name>/` (`config.py`: a BackendSection;
`backend.py`: the adapter, registered with `@register_backend("<name>")`), its image
folder `images/<name>/` (Dockerfile + requirements.lock), and one row here.
"""

from __future__ import annotations

from dataclasses import dataclass

from llenergymeasure.backends.pytorch import config as pytorch
from llenergymeasure.backends.pytorch import server as pytorch_server
from llenergymeasure.backends.section import BackendSection
from llenergymeasure.backends.serving.spec import ServerSpec
from llenergymeasure.backends.tensorrt import config as tensorrt
from llenergymeasure.backends.tensorrt import server as tensorrt_server
from llenergymeasure.backends.vllm import config as vllm
from llenergymeasure.backends.vllm import server as vllm_server


@dataclass(frozen=True)
class BackendRow:
    name: str  # `backend:` value, section key, package backends/<name>/, image folder images/<name>/
    section: type[BackendSection]  # its settings section
    engine_package: str  # the importable package that means the engine is installed
    gpu_only: bool  # refuses to run on the CPU
    continuous_batching: bool  # requests in flight vary over a pass: a steady-state window applies
    lora_unsupported: str | None = None  # None: applies LoRA adapters; else why not, and what to do
    # runs in a Python environment of its own on the local runner (its pins conflict with
    # the host's: vLLM's transformers<5.18 vs the PyTorch backend's); created by
    # `make setup BACKEND=<name>` from images/<name>/requirements-cpu.lock
    own_environment: bool = False
    # the local runner forks its runs from a launcher that pre-imported this adapter and
    # its engine once (backends/launcher/), instead of a new interpreter per run; only for
    # a backend in the host's own environment whose run is one process (vLLM and
    # TensorRT-LLM start engine workers of their own, and their engine start dominates)
    pre_imported: bool = False
    # the serving scenario: how to start this backend's own OpenAI-compatible server
    # (backends/<name>/server.py); None, with server_unsupported saying why, for a backend without one
    server: ServerSpec | None = None
    server_unsupported: str | None = None

    @property
    def adapter_module(self) -> str:
        """The module whose import registers the adapter (imported only by a run)."""
        return f"llenergymeasure.backends.{self.name}.backend"


TABLE: tuple[BackendRow, ...] = (
    BackendRow("pytorch", pytorch.PyTorchConfig, "transformers", gpu_only=False, continuous_batching=False,
               lora_unsupported=pytorch.LORA_UNSUPPORTED, pre_imported=True, server=pytorch_server.SERVER),
    BackendRow("vllm", vllm.VLLMConfig, "vllm", gpu_only=False, continuous_batching=True, own_environment=True,
               server=vllm_server.SERVER),
    BackendRow("tensorrt", tensorrt.TensorRTConfig, "tensorrt_llm", gpu_only=True, continuous_batching=True,
               lora_unsupported=tensorrt.LORA_UNSUPPORTED, server=tensorrt_server.SERVER),
)

BACKENDS: tuple[str, ...] = tuple(r.name for r in TABLE)


def backend_row(name: str) -> BackendRow:
    for row in TABLE:
        if row.name == name:
            return row
    raise KeyError(f"unknown backend {name!r}; known: {', '.join(BACKENDS)}")
