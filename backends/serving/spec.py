"""How a backend describes its own OpenAI-compatible server, in two parts, as adapters are
described (the table names the module; the run imports it):

- `ServerSpec` (the backend table's `BackendRow.server`, from backends/<name>/server.py):
  what the server is and which of an experiment's settings it cannot apply, checked when
  the config loads. It imports nothing from the config (the table is built while the config
  module loads), so it receives the experiment as a value.
- `ServerLauncher` (backends/<name>/serve.py, its `LAUNCHER`, imported by the run through
  `launcher()`): the command that starts the server, what each completion request adds to
  the common body, and what its stream carries. It may import the adapter's mappings (the
  vLLM engine arguments), which depend on the config.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

READY_PATH = "/v1/models"
COMPLETIONS_PATH = "/v1/completions"


def _no_problem(config: Any) -> str | None:
    return None


@dataclass(frozen=True)
class ServerSpec:
    name: str  # what it is, for logs and the result ("transformers serve --continuous-batching")
    launcher: str  # the module whose LAUNCHER starts and talks to it (imported by the run only)
    # why an experiment's settings cannot run on this server (checked when the config loads), or None
    problem: Callable[[Any], str | None] = _no_problem


@dataclass(frozen=True)
class ServerLaunch:
    """What starting a server needs, resolved inside the run."""

    config: Any  # the ExperimentConfig
    model_dir: Path  # the checkpoint (its tokenizer, for TensorRT-LLM's engine)
    host: str
    port: int
    device: str  # "cpu" or "cuda:0" (runners remap the run's GPUs to start at 0)
    python: str  # the run's own interpreter: the server runs in the same environment
    engine_dir: Path | None = None  # TensorRT-LLM: the prebuilt engine (contract.ENV_TRT_ENGINE_DIR)


def _no_env(launch: ServerLaunch) -> dict[str, str]:
    return {}


def _model_dir(launch: ServerLaunch) -> str:
    return str(launch.model_dir)


@dataclass(frozen=True)
class ServerLauncher:
    # argv that starts it listening on launch.host:launch.port
    command: Callable[[ServerLaunch], list[str]]
    # fields every /v1/completions body carries beyond the common ones (model, prompt,
    # max_tokens, stream, temperature, top_p): how this server is told the decoding recipe
    # (backends/decoding.py's Decoding)
    request_fields: Callable[[Any, Any], dict[str, Any]]
    # how it is made to generate exactly max_tokens with ignore_eos (for the record)
    exact_length: str
    env: Callable[[ServerLaunch], dict[str, str]] = _no_env
    served_model: Callable[[ServerLaunch], str] = _model_dir  # the `model` each request names
    # POSTed after warm-up to empty the prefix cache (as the offline adapters do before
    # every pass), so the load does not reuse KV blocks warm-up computed; None: no such call
    cache_reset_path: str | None = None
    notes: tuple[str, ...] = field(default_factory=tuple)  # recorded in the result


def launcher(spec: ServerSpec) -> ServerLauncher:
    """The spec's launcher (imports its module: in a run, never when a config loads)."""
    return importlib.import_module(spec.launcher).LAUNCHER


def in_flight_cap(config: Any) -> int:
    """Requests that can be in flight at once: the client's cap, else every request of the
    load (what a server's KV cache is sized for on the CPU, as offline for n_prompts at once)."""
    s = config.serving
    if s.max_concurrency is not None:
        return s.max_concurrency
    return s.n_requests if s.n_requests is not None else config.n_prompts


def flag(name: str) -> str:
    """`max_num_seqs` -> `--max-num-seqs` (vLLM's and transformers' CLI spelling)."""
    return "--" + name.replace("_", "-")
