"""What the launcher imports once for every run, and what it checks before each fork.

Only modules a PyTorch run imports anyway (tests/execution/test_launcher.py compares the
two): importing one a run would not changes the run (its import-time side effects), not
just its start-up time. Importing runs no operator and initialises no device: torch
initialises CUDA lazily, and the launcher calls nothing that would.
"""

from __future__ import annotations

import ctypes
import importlib
import os
import time

from llenergymeasure.backends.harness.process_start import ForkChecks
from llenergymeasure.backends.table import TABLE

MODULES = (
    "torch",
    "transformers",
    # the architecture of the built-in tiny model (and of Llama, Mistral-style checkpoints);
    # a run of another architecture imports its own modelling module itself
    "transformers.models.llama.modeling_llama",
    "llenergymeasure.backends.harness.entrypoint",  # the harness: protocol, energy, sampler, results
    *(row.adapter_module for row in TABLE if row.pre_imported),  # with them transformers' Auto classes
    # what a run imports after its window to write requests.parquet and timeseries.parquet:
    # pyarrow, and pandas, which pyarrow imports on its first conversion from Python objects
    # (to tell DataFrames apart): about half a second of every run on an idle machine
    "pyarrow",
    "pyarrow.parquet",
    "pandas",
)

# pyarrow's bundled jemalloc starts a background purging thread when it is loaded, and a
# launcher must stay single-threaded to fork safely: it loads it without one (jemalloc then
# purges as it allocates). Runs use pyarrow only after their window, to write their files.
ARROW_JEMALLOC = ("JE_ARROW_MALLOC_CONF", "background_thread:false")


def pre_import() -> float:
    """Import every module a run would import; the seconds it took."""
    t0 = time.monotonic()
    name, value = ARROW_JEMALLOC
    own = name not in os.environ  # a conf the user set is theirs: the fork check then says if it starts a thread
    if own:
        os.environ[name] = value
    try:
        for module in MODULES:
            importlib.import_module(module)
    finally:
        if own:  # read when jemalloc initialised; runs get their environment from the runner anyway
            os.environ.pop(name, None)
    return time.monotonic() - t0


def _mapped_libraries() -> set[str]:
    libraries = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            path = line.rstrip("\n").split(maxsplit=5)[5:]
            if path and ".so" in path[0]:
                libraries.add(path[0])
    return libraries


def stop_idle_blas_pools() -> int:
    """Stop the thread pools OpenBLAS starts as soon as it is loaded (numpy and scipy each
    carry a copy); how many were stopped.

    They are idle, but a process with them is not single-threaded. OpenBLAS's own fork
    handler (pthread_atfork) stops them in the parent at every fork anyway; doing it once
    here, after the imports, makes the launcher single-threaded for good and lets the
    one-thread check mean what it says. A run's OpenBLAS starts its pool again, with the
    same size, on its first BLAS call."""
    stopped = 0
    for path in sorted(p for p in _mapped_libraries() if "openblas" in os.path.basename(p)):
        try:
            shutdown = ctypes.CDLL(path).blas_thread_shutdown_
        except (OSError, AttributeError):  # not this OpenBLAS build's symbol: the check will say
            continue
        shutdown()
        stopped += 1
    return stopped


def thread_count() -> int:
    """Threads of this process as the kernel counts them (native ones included, which
    `threading.active_count()` does not see)."""
    return len(os.listdir("/proc/self/task"))


def fork_checks() -> ForkChecks:
    import torch

    return ForkChecks(
        threads=thread_count(),
        cuda_initialized=torch.cuda.is_initialized(),
        cuda_driver_loaded=any(os.path.basename(p).startswith("libcuda.so") for p in _mapped_libraries()),
    )
