"""The one interface every backend adapter implements, and the registry of adapters
(which module registers which backend is the backend table's, backends/table.py).

The harness owns the protocol (timing, energy, windows); an adapter only loads a
model, prepares inputs, generates and reports per-request token timestamps.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.table import backend_row


@dataclass
class RequestRecord:
    """One request's timing, on the `time.perf_counter()` clock.

    The adapter fills `submitted_s` (when it handed the request to its engine; for a
    static batch, when the batch started) and `token_times_s` (when each output token
    reached the host). `arrival_s` is not the adapter's: the harness stamps it
    (`harness.protocol.run_pass`) as when the request arrived at the workload, because
    every latency counts from arrival. Counting from submission would let each adapter
    define TTFT its own way (a static batch's start is not when its requests arrived);
    `submitted_s` stays as a diagnostic of where the wait happened.
    """

    input_tokens: int
    submitted_s: float
    token_times_s: list[float] = field(default_factory=list)
    arrival_s: float | None = None  # set by the harness, never by an adapter
    # the generated token ids, in order (one per entry of token_times_s): lets anyone
    # check whether two backends generated the same text for the same prompt
    token_ids: list[int] = field(default_factory=list)

    @property
    def output_tokens(self) -> int:
        return len(self.token_times_s)


@dataclass
class LoadedModel:
    """What loading resolved, recorded in the result."""

    model_path: str
    n_parameters: int
    device: str
    dtype: str
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class AdapterWarning:
    """Something an adapter saw go wrong that the result must carry: a validity warning
    (`code` is one of harness/validity.py's CODES), which the harness adds to the run's."""

    code: str
    detail: str


class Backend(Protocol):
    """A loaded-once, generate-many engine driven by the harness."""

    def load(self) -> LoadedModel: ...

    def prepare(self, prompts: list[str]) -> Any:
        """Tokenise and batch (outside the measured window)."""
        ...

    def generate(self, prepared: Any, max_batches: int | None = None) -> list[RequestRecord]:
        """Run the workload (or its first `max_batches` batches, for warm-up; for
        continuous-batching engines a "batch" is as many requests as the engine
        runs at once). One record per request, in the order of the prompts
        (`requests.parquet` names each by that position)."""
        ...

    def synchronize(self) -> None:
        """Wait until the device has finished all queued work."""
        ...

    def run_warnings(self) -> list[AdapterWarning]:
        """What went wrong in this adapter's calls so far that makes the measurement
        suspect ([] when nothing did); the harness reads it after the measured window.
        Only the adapter can see these (e.g. its engine refusing to reset a cache), and a
        log line is not enough: the result must say so."""
        ...


BackendFactory = Callable[[ExperimentConfig], Backend]

_FACTORIES: dict[str, BackendFactory] = {}


class BackendUnavailable(Exception):
    """This backend cannot run in this environment; the message says why."""


def register_backend(name: str) -> Callable[[BackendFactory], BackendFactory]:
    def deco(factory: BackendFactory) -> BackendFactory:
        _FACTORIES[name] = factory
        return factory

    return deco


def create_backend(config: ExperimentConfig) -> Backend:
    """The adapter for the config's backend. Its module is imported here, in the run,
    because vLLM and TensorRT-LLM are heavy and exist only in their own images."""
    importlib.import_module(backend_row(config.backend).adapter_module)
    return _FACTORIES[config.backend](config)
