"""SIGTERM (a scheduler, `kill`, a shutdown) ends a study the way Ctrl-C does: the
running run is stopped and marked interrupted, finished runs are kept, and the
study can be resumed. Python turns SIGINT into KeyboardInterrupt by itself; this
module does the same for SIGTERM, with its own exit code (128 + 15)."""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt that remembers which signal caused it and, once `llem run`
    knows, what the interrupt left behind (`outcome`, said by the CLI: finished runs
    are kept only where a study directory exists)."""

    def __init__(self, signal_name: str, exit_code: int, outcome: str | None = None) -> None:
        super().__init__(signal_name)
        self.signal_name = signal_name
        self.exit_code = exit_code
        self.outcome = outcome


def describe(exc: KeyboardInterrupt) -> str:
    return exc.signal_name if isinstance(exc, Interrupted) else "Ctrl-C"


def exit_code(exc: KeyboardInterrupt) -> int:
    return exc.exit_code if isinstance(exc, Interrupted) else 130


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise Interrupted("SIGTERM", 128 + signal.SIGTERM)


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While inside, SIGTERM raises Interrupted (only the main thread can handle
    signals; elsewhere this does nothing)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
