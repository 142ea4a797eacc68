"""The local runner's side of the pre-imported launcher (backends/launcher/).

`Launcher` starts `python -m llenergymeasure.backends.launcher` in the run's Python
environment, with the environment a run would get minus what is the run's own, waits
until it has imported torch, transformers and the harness, and asks it for runs.
Each run comes back as a `LaunchedRun`, which the runner waits on, times out and stops
exactly as it does a `subprocess.Popen` (both are a `RunProcess`): the run leads its
own process group, and its exit status arrives when the launcher has reaped it.

Anything that keeps a run from starting this way raises `LauncherUnavailable`; the
runner then starts that run, and every later one, as a new interpreter, so a run is
never lost to the launcher. LLEM_LAUNCHER=0 turns it off.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import tempfile
import threading
import weakref
from pathlib import Path
from typing import Protocol

from llenergymeasure.backends.launcher.messages import (
    Exited,
    Launched,
    LaunchRequest,
    ProtocolError,
    Ready,
    Refused,
    pass_socket,
    receive,
    send,
)
from llenergymeasure.backends.processes import LAUNCHER_MODULE

ENV_SWITCH = "LLEM_LAUNCHER"  # "0": every run of the local runner is a new interpreter
MODULE = LAUNCHER_MODULE
READY_TIMEOUT_S = 600.0  # its imports: seconds on an idle machine, far more on a loaded one
REPLY_TIMEOUT_S = 120.0  # from a request to the child saying it exists: milliseconds when well
CLOSE_TIMEOUT_S = 10.0


def enabled() -> bool:
    return os.environ.get(ENV_SWITCH, "1").strip() != "0"


class LauncherUnavailable(Exception):
    """This run cannot start from the launcher (say why; the runner starts a new interpreter)."""


class RunProcess(Protocol):
    """What the local runner needs of a run's process: a `subprocess.Popen`, or a
    `LaunchedRun`. Its pid is also its process group's id."""

    pid: int
    returncode: int | None

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int | None: ...


class LaunchedRun:
    """A run forked by the launcher, as the runner sees a `subprocess.Popen`.

    `wait(timeout)` raises subprocess.TimeoutExpired while the run goes on; the status
    (`returncode`, negative for a signal) is the launcher's, from waitpid. If the
    launcher itself dies first, the run (which watches it) stops itself; `wait` then
    returns once the process is gone, with `returncode` None: the status is unknown."""

    def __init__(self, run_socket: socket.socket, launched: Launched) -> None:
        self._socket = run_socket
        self.pid = launched.pid
        self.launched = launched
        self.args = [MODULE, f"run {launched.pid}"]  # for TimeoutExpired's message
        self.returncode: int | None = None
        self._finished = False
        self._pidfd: int | None = None  # watched only once the launcher is gone

    def poll(self) -> int | None:
        try:
            return self.wait(timeout=0)
        except subprocess.TimeoutExpired:
            return None

    def wait(self, timeout: float | None = None) -> int | None:
        if not self._finished:
            if self._pidfd is None:
                self._await_status(timeout)
            if self._pidfd is not None:
                self._await_orphan(timeout)
        return self.returncode

    def _await_status(self, timeout: float | None) -> None:
        if not _readable(self._socket.fileno(), timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        try:
            message = receive(self._socket)
        except (OSError, ProtocolError):
            message = None
        if isinstance(message, Exited):
            self.returncode = message.returncode
            self._finish()
            return
        try:  # the launcher is gone before it could tell: follow the process itself
            self._pidfd = os.pidfd_open(self.pid)
        except ProcessLookupError:
            self._finish()

    def _await_orphan(self, timeout: float | None) -> None:
        assert self._pidfd is not None
        if not _readable(self._pidfd, timeout):
            raise subprocess.TimeoutExpired(self.args, timeout or 0)
        os.close(self._pidfd)
        self._pidfd = None
        self._finish()

    def _finish(self) -> None:
        self._finished = True
        self._socket.close()


def _readable(fd: int, timeout: float | None) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


class Launcher:
    """One launcher process and its control socket; safe to use from several threads."""

    def __init__(self, proc: subprocess.Popen, control: socket.socket, env: dict[str, str], ready: Ready) -> None:
        self.proc, self.env, self.ready = proc, env, ready
        self._control = control
        self._lock = threading.Lock()
        # a runner dropped without close(): the launcher still ends (and is reaped) with it
        self._finalizer = weakref.finalize(self, _shut_down, proc, control)

    @classmethod
    def start(cls, python: Path, env: dict[str, str]) -> Launcher:
        """Start one and wait until its imports are done (raises LauncherUnavailable)."""
        ours, theirs = _socketpair()
        with tempfile.TemporaryFile() as errors:
            try:
                proc = subprocess.Popen(
                    [str(python), "-m", MODULE, "--fd", str(theirs.fileno())], env=env,
                    pass_fds=[theirs.fileno()], cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                    stderr=errors, start_new_session=True,  # Ctrl-C reaches the orchestrator only
                )
            except OSError as e:
                ours.close()
                raise LauncherUnavailable(f"the launcher did not start ({e})") from None
            finally:
                theirs.close()
            try:
                ready = _first_message(ours, READY_TIMEOUT_S)
            except BaseException:  # Ctrl-C while it imports
                _shut_down(proc, ours)
                raise
            if not isinstance(ready, Ready):
                _shut_down(proc, ours)
                raise LauncherUnavailable(f"the launcher did not start: {_last_line(errors)}") from None
        return cls(proc, ours, env, ready)

    def launch(self, env: dict[str, str], cwd: Path, log_path: Path) -> LaunchedRun:
        """Fork one run (raises LauncherUnavailable if it could not)."""
        ours, theirs = _socketpair()
        try:
            with self._lock:
                pass_socket(self._control, theirs)
            send(ours, LaunchRequest(env=env, cwd=str(cwd), log_path=str(log_path)))
        except OSError as e:
            ours.close()
            raise LauncherUnavailable(f"the launcher is gone ({e})") from None
        finally:
            theirs.close()
        reply = _first_message(ours, REPLY_TIMEOUT_S)
        if isinstance(reply, Launched):
            return LaunchedRun(ours, reply)
        ours.close()
        if isinstance(reply, Refused):
            raise LauncherUnavailable(f"the launcher refused to fork a run: {reply.reason}")
        if isinstance(reply, Exited):
            raise LauncherUnavailable(f"a run forked by the launcher ended before it started (exit code "
                                      f"{reply.returncode}; see {log_path})")
        raise LauncherUnavailable("the launcher is gone (it closed the run's socket)")

    def close(self) -> None:
        """End the launcher: it stops on its control socket's end of file."""
        self._finalizer()


def _socketpair() -> tuple[socket.socket, socket.socket]:
    try:
        return socket.socketpair()
    except OSError as e:  # e.g. out of file descriptors
        raise LauncherUnavailable(f"no socket to the launcher ({e})") from None


def _first_message(sock: socket.socket, timeout_s: float) -> object:
    sock.settimeout(timeout_s)
    try:
        return receive(sock)
    except (OSError, ProtocolError):  # a timeout is an OSError too
        return None
    finally:
        sock.settimeout(None)


def _last_line(errors) -> str:  # type: ignore[no-untyped-def]
    errors.seek(0)
    lines = errors.read().decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "it exited without a word"


def _shut_down(proc: subprocess.Popen, control: socket.socket) -> None:
    control.close()
    try:
        proc.wait(timeout=CLOSE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
