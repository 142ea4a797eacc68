"""The server as a subprocess of the run: started in a process group of its own (so that
stopping it reaches its workers, such as vLLM's engine core, and nothing of the harness),
its output in a log file of the run directory, ready when `/v1/models` answers, and
killed with its whole group when the run ends, however it ends.

On Linux the server is also told to die with the run (PR_SET_PDEATHSIG, set by a
two-line exec wrapper rather than a preexec_fn, which is unsafe beside the sampler's
thread): a run killed outright (SIGKILL, out of memory) leaves no server behind.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections import deque
from pathlib import Path

from llenergymeasure.backends.harness.heartbeat import beat
from llenergymeasure.backends.serving.client import http_call

log = logging.getLogger("llem.serving")

LOG_TAIL_LINES = 40
POLL_S = 0.25
STOP_GRACE_S = 10.0
# exec the server with "die when the run dies" set (prctl 1 = PR_SET_PDEATHSIG)
_DIE_WITH_PARENT = ("import ctypes, os, signal, sys; ctypes.CDLL(None).prctl(1, signal.SIGKILL); "
                    "os.execvp(sys.argv[1], sys.argv[1:])")


class ServerFailed(RuntimeError):
    """The server did not start, died, or failed requests; the message ends with its log's last lines."""


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            return b"".join(deque(f, maxlen=lines)).decode("utf-8", errors="replace").rstrip()
    except OSError:
        return "(no server log)"


class ServerProcess:
    def __init__(self, argv: list[str], env: dict[str, str], log_path: Path, host: str, port: int) -> None:
        self.argv, self.env, self.log_path, self.host, self.port = argv, env, log_path, host, port
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def failure(self, what: str) -> ServerFailed:
        return ServerFailed(f"{what}\n--- last lines of {self.log_path.name} ---\n{tail(self.log_path)}")

    def start(self) -> None:
        wrapped = [sys.executable, "-c", _DIE_WITH_PARENT, *self.argv] if sys.platform.startswith("linux") else self.argv
        log.info("starting server: %s", " ".join(self.argv))
        with self.log_path.open("ab") as out:
            try:
                self.proc = subprocess.Popen(wrapped, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                             env={**os.environ, **self.env, "PYTHONUNBUFFERED": "1"},
                                             process_group=0)
            except OSError as e:
                raise self.failure(f"the server could not be started ({self.argv[0]}: {e})") from None

    def exited(self) -> int | None:
        return None if self.proc is None else self.proc.poll()

    def check_alive(self, when: str) -> None:
        code = self.exited()
        if code is not None:
            raise self.failure(f"the server exited with code {code} {when}")

    def wait_ready(self, timeout_s: float, path: str) -> float:
        """Seconds until GET `path` answers 200; ServerFailed when the server exits first
        or does not answer within timeout_s."""
        t0 = time.perf_counter()
        last = "no answer yet"
        while True:
            self.check_alive("before it answered")
            try:
                status, body = http_call(self.host, self.port, "GET", path, timeout_s=2.0)
                if status == 200:
                    return time.perf_counter() - t0
                last = f"HTTP {status}: {body[:200]}"
            except OSError as e:
                last = f"{type(e).__name__}: {e}"
            if time.perf_counter() - t0 > timeout_s:
                raise self.failure(f"the server did not answer {path} within serving.server_start_timeout_s "
                                   f"({timeout_s:g} s); last: {last}")
            beat("load")
            time.sleep(POLL_S)

    def stop(self) -> None:
        """SIGTERM to the server's group, SIGKILL after STOP_GRACE_S; safe to call twice."""
        if self.proc is None:
            return
        proc, self.proc = self.proc, None
        for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, STOP_GRACE_S)):
            try:
                os.killpg(proc.pid, sig)
            except (ProcessLookupError, PermissionError):
                break
            try:
                proc.wait(wait)
                if sig == signal.SIGTERM:
                    self._kill_stragglers(proc.pid)
                break
            except subprocess.TimeoutExpired:
                continue

    @staticmethod
    def _kill_stragglers(pgid: int) -> None:
        """The group leader is gone; its workers may not be."""
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
