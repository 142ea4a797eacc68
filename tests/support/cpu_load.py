"""A bounded CPU load beside the tests (`pytest --cpu-load N`, `make test-under-load`): N
processes that spin until the session ends, or by themselves after MAX_SECONDS whatever
happens to pytest. Tests that signal, kill or time out runs must pass under it: a test
that only passes on an idle machine is a race that fails on someone's laptop."""

from __future__ import annotations

import subprocess
import sys

MAX_SECONDS = 2 * 3600  # no spinner outlives this, even if the session that started it is killed
SPIN = "import time, sys\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


class CpuLoad:
    def __init__(self, processes: int, max_seconds: float = MAX_SECONDS) -> None:
        self.processes, self.max_seconds = processes, max_seconds
        self.procs: list[subprocess.Popen] = []

    def __enter__(self) -> CpuLoad:
        self.procs = [subprocess.Popen([sys.executable, "-c", SPIN, str(self.max_seconds)])
                      for _ in range(self.processes)]
        return self

    def __exit__(self, *exc: object) -> None:
        for p in self.procs:
            p.kill()
            p.wait()
