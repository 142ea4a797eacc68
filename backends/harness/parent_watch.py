"""A local run stops itself when the orchestrator that started it is gone.

The local runner starts each run in its own session (so Ctrl-C reaches only the
orchestrator, which then stops the run cleanly). The price is that a run would
outlive an orchestrator killed with SIGKILL (or OOM-killed), measuring on into
an abandoned study. The runner passes its pid in LLEM_PARENT_PID; a daemon thread
here notices when the parent changes, sends this process SIGTERM (the harness
then writes error.json), and SIGKILLs its process group if that did not end it.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from llenergymeasure.backends import contract

POLL_S = 0.5
GRACE_S = 10.0


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_S)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(GRACE_S)
    try:
        os.killpg(os.getpgid(0), signal.SIGKILL)
    except OSError:
        os.kill(os.getpid(), signal.SIGKILL)


def start() -> None:
    """Start watching if a runner asked for it (containers need no watch: the
    Docker runner's reaper removes containers of a dead orchestrator)."""
    raw = os.environ.get(contract.ENV_PARENT_PID)
    if not raw or not raw.isdigit():
        return
    parent = int(raw)
    if os.getppid() != parent:  # the parent died before we got here
        os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=_watch, args=(parent,), name="llem-parent-watch", daemon=True).start()
