"""When a runner must stop a run: the wall-clock limit and the no-progress watchdog.

Both runners poll a `RunGuard` while a run executes. Progress is any change to the
run's log (everything it prints) or to its heartbeat file (backends/harness/
heartbeat.py, rewritten by the harness's main thread as it works). Changes are
noticed by comparing file sizes and mtimes between polls against our own monotonic
clock, so the run's clock (or a container's) never matters.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from llenergymeasure.backends import contract
from llenergymeasure.orchestrator.execution import failures


@dataclass(frozen=True)
class Stop:
    kind: str  # failures.TIMEOUT | failures.STALLED
    reason: str


class RunGuard:
    def __init__(
        self, run_dir: Path, timeout_s: float | None, stall_s: float | None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.files = [run_dir / contract.LOG_FILE, run_dir / contract.HEARTBEAT_FILE]
        self.timeout_s, self.stall_s, self.clock = timeout_s, stall_s, clock
        self.t0 = self.last_progress = clock()
        self._seen = self._state()

    def _state(self) -> tuple[tuple[int, int], ...]:
        out = []
        for f in self.files:
            try:
                st = os.stat(f)
                out.append((st.st_size, st.st_mtime_ns))
            except OSError:
                out.append((-1, -1))
        return tuple(out)

    def check(self) -> Stop | None:
        """A reason to stop the run now, or None."""
        now = self.clock()
        state = self._state()
        if state != self._seen:
            self._seen, self.last_progress = state, now
        if self.timeout_s is not None and now - self.t0 > self.timeout_s:
            return Stop(failures.TIMEOUT, f"timed out after {self.timeout_s:g} s (execution.run_timeout_s)")
        if self.stall_s is not None and now - self.last_progress > self.stall_s:
            return Stop(failures.STALLED, f"no output or heartbeat for {self.stall_s:g} s "
                        f"(execution.stall_timeout_s){self._last_phase()}; stopped as hung")
        return None

    def _last_phase(self) -> str:
        try:
            phase = self.files[1].read_text().split()[1]
        except (OSError, IndexError):
            return "; it never reported progress"
        return f"; last progress in phase '{phase}'"
