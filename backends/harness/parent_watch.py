"""A local run stops itself when the orchestrator that started it is gone.

The local runner starts each run in its own session (so Ctrl-C reaches only the
orchestrator, which then stops the run cleanly). The price is that a run would
outlive an orchestrator killed with SIGKILL (or OOM-killed), measuring on into
an abandoned study. The runner passes its pid in LLEM_PARENT_PID; a daemon thread
here notices when the parent changes, sends this process SIGTERM (the harness
then writes error.json), and SIGKILLs its process group if that did not end it.

The local runner's launcher (backends/launcher/) watches the same way, from its own
loop rather than a thread (it must stay single-threaded to fork): `watched_parent` and
`parent_gone` are the test both use. A child forked from it watches the launcher.
"""

from __future__ import annotations

import os
import signal
import threading
import time

from llenergymeasure.backends import contract

POLL_S = 0.5
GRACE_S = 10.0


def watched_parent() -> int | None:
    """The pid this process must not outlive (LLEM_PARENT_PID), or None if no runner asked."""
    raw = os.environ.get(contract.ENV_PARENT_PID)
    return int(raw) if raw and raw.isdigit() else None


def parent_gone(parent: int) -> bool:
    """Whether `parent` is no longer this process's parent (it died: we were re-parented)."""
    return os.getppid() != parent


def _watch(parent: int) -> None:
    while not parent_gone(parent):
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
    parent = watched_parent()
    if parent is None:
        return
    if parent_gone(parent):  # the parent died before we got here
        os.kill(os.getpid(), signal.SIGTERM)
        return
    threading.Thread(target=_watch, args=(parent,), name="llem-parent-watch", daemon=True).start()
