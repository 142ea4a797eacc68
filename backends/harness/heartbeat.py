"""Progress signals for the host's no-progress watchdog (orchestrator/execution/watchdog.py).

The harness calls `beat(phase)` as it makes real progress (each protocol phase,
each batch). It rewrites `heartbeat` in the run directory; the runner watches that
file and run.log, and stops a run when neither changes for
`execution.stall_timeout_s`. Beats come from the main thread on purpose: a
background thread would keep beating while the work itself is stuck.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from llenergymeasure.backends import contract

MIN_INTERVAL_S = 1.0  # at most one write a second, so beats inside the window cost nothing
_last = {"t": 0.0, "phase": ""}


def beat(phase: str | None = None) -> None:
    """Record progress (in `phase`, or the current one: adapters don't know the
    phase). A new phase is written at once, more of the same at most once a second.
    Never raises: a full disk must not fail a run here."""
    now = time.monotonic()
    phase = phase or _last["phase"] or "run"
    if phase == _last["phase"] and now - _last["t"] < MIN_INTERVAL_S:
        return
    _last.update(t=now, phase=phase)
    run_dir = os.environ.get(contract.ENV_RUN_DIR)
    if not run_dir:
        return
    try:
        Path(run_dir, contract.HEARTBEAT_FILE).write_text(f"{time.time():.3f} {phase}\n")
    except OSError:
        pass
