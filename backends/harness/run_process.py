"""What a run process does, however it was started.

A run process is either a new interpreter (`python -m llenergymeasure.backends`: the
Docker image's entrypoint, Slurm, vLLM's environment, or the local runner with
LLEM_LAUNCHER=0) or a child forked from the local runner's pre-imported launcher
(backends/launcher/). Both then do exactly `run_this_process`; each result records which
one it was (harness/process_start.py).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import NoReturn

from llenergymeasure.backends.harness import faults, parent_watch


def run_this_process() -> NoReturn:
    """One run, start to exit: the body of `python -m llenergymeasure.backends`, and what a
    child forked from the launcher does once it is set up as a run process."""
    parent_watch.start()  # first: a run must never outlive the local orchestrator
    try:
        faults.inject("start")  # TEST HOOK: a no-op unless LLEM_TEST_FAULT is set

        from llenergymeasure.backends.harness.entrypoint import (  # imports torch: after the cheap checks
            exit_now,
            main,
        )
    except Exception:  # noqa: BLE001 - the run never began (the start fault, a broken install)
        # what an uncaught exception gives (its traceback, exit code 1), without the
        # interpreter's teardown: a second or more where torch is already imported, as
        # in a child of the launcher, and nothing to tear down that matters
        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)
    exit_now(main())
    sys.exit(1)  # not reached
