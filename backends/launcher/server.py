"""The launcher's loop: requests in, children forked and reaped, statuses out.

One thread, and it never starts another (a fork keeps only the calling thread). It
waits (poll, no selector fd to leak into children) on the control socket and on one
pidfd per running child:

- a run's socket arrives on the control socket: read its LaunchRequest, check the
  fork preconditions, fork (the child leaves the loop to become the run) or answer
  Refused;
- a child's pidfd turns readable: reap it and send Exited on the run's socket;
- the control socket closes, or the orchestrator is no longer our parent (parent_watch's
  test, every POLL_S): SIGTERM each running child's process group (the harness writes
  error.json, as a run does when its orchestrator goes) and end.
"""

from __future__ import annotations

import argparse
import enum
import os
import select
import signal
import socket
import sys
from dataclasses import dataclass

from llenergymeasure.backends.harness.parent_watch import (
    POLL_S,
    parent_gone,
    watched_parent,
)
from llenergymeasure.backends.harness.process_start import ForkChecks
from llenergymeasure.backends.launcher import child, preload
from llenergymeasure.backends.launcher.messages import (
    Exited,
    LaunchRequest,
    ProtocolError,
    Ready,
    Refused,
    receive,
    send,
    take_socket,
)

REQUEST_TIMEOUT_S = 30.0  # the runner sends a run's request right after its socket


class Next(enum.Enum):
    RUN = "run"  # this process is a forked child: it must now run
    EXIT = "exit"  # the launcher is done


@dataclass
class _Child:
    pid: int
    pidfd: int
    sock: socket.socket


class Launcher:
    def __init__(self, control: socket.socket, parent: int | None) -> None:
        self.control, self.parent = control, parent
        self.children: dict[int, _Child] = {}  # by pidfd
        self.poller = select.poll()
        self.poller.register(control, select.POLLIN)

    def serve(self) -> Next:
        while True:
            if self.parent is not None and parent_gone(self.parent):
                return self._stop()
            for fd, _ in self.poller.poll(POLL_S * 1000):
                if fd in self.children:
                    self._reap(self.children.pop(fd))
                    continue
                run_socket = take_socket(self.control)
                if run_socket is None:  # the runner closed the control socket (or died)
                    return self._stop()
                if self._launch(run_socket) is Next.RUN:
                    return Next.RUN

    def _launch(self, run_socket: socket.socket) -> Next | None:
        try:
            run_socket.settimeout(REQUEST_TIMEOUT_S)
            request = receive(run_socket)
            run_socket.settimeout(None)
        except (OSError, ProtocolError):
            request = None
        if not isinstance(request, LaunchRequest):
            run_socket.close()
            return None
        checks = preload.fork_checks()
        if problems := checks.problems():
            self._refuse(run_socket, "not safe to fork: " + "; ".join(problems), checks)
            return None
        launcher_pid = os.getpid()
        try:
            pid = os.fork()
        except OSError as e:
            self._refuse(run_socket, f"fork failed: {e}", checks)
            return None
        if pid == 0:
            self._become_run(request, run_socket, launcher_pid, checks)
            return Next.RUN
        pidfd = os.pidfd_open(pid)
        self.children[pidfd] = _Child(pid, pidfd, run_socket)
        self.poller.register(pidfd, select.POLLIN)
        return None

    def _become_run(self, request: LaunchRequest, run_socket: socket.socket, launcher_pid: int,
                    checks: ForkChecks) -> None:
        """In the child: become the run, or end here; never back into the loop."""
        try:
            self._let_go()
            child.become_run(request, run_socket, launcher_pid, checks)
        except BaseException as e:  # noqa: BLE001 - whatever it was, this child is not a run
            try:
                os.write(2, f"llem launcher: could not start the run: {type(e).__name__}: {e}\n".encode())
            finally:
                os._exit(child.SETUP_FAILED)

    def _let_go(self) -> None:
        """In the child: close what belongs to the launcher (through their objects, so that
        nothing closes a number the run reuses later)."""
        self.control.close()
        for c in self.children.values():
            c.sock.close()
            os.close(c.pidfd)
        self.children.clear()

    def _refuse(self, run_socket: socket.socket, reason: str, checks: ForkChecks) -> None:
        try:
            send(run_socket, Refused(reason=reason, checks=checks))
        except OSError:
            pass
        run_socket.close()

    def _reap(self, c: _Child) -> None:
        self.poller.unregister(c.pidfd)
        os.close(c.pidfd)
        _, status = os.waitpid(c.pid, 0)
        try:
            send(c.sock, Exited(pid=c.pid, returncode=os.waitstatus_to_exitcode(status)))
        except OSError:  # the runner stopped listening (it is going away)
            pass
        c.sock.close()

    def _stop(self) -> Next:
        for c in self.children.values():
            try:
                os.killpg(c.pid, signal.SIGTERM)
            except OSError:
                pass
        return Next.EXIT


def serve_until_forked(argv: list[str]) -> None:
    """The launcher's whole life: returns only in a forked child, which must then run;
    the launcher itself ends in here (without the second of interpreter teardown that
    torch and transformers would cost)."""
    args = argparse.ArgumentParser(prog="python -m llenergymeasure.backends.launcher")
    args.add_argument("--fd", type=int, required=True, help="the control socket, inherited from the runner")
    control = socket.socket(fileno=args.parse_args(argv).fd)
    os.close(os.pidfd_open(os.getpid()))  # needs Linux 5.3: fail here, where the runner falls back
    import_s = preload.pre_import()
    preload.stop_idle_blas_pools()
    send(control, Ready(pid=os.getpid(), import_s=import_s))
    if Launcher(control, watched_parent()).serve() is Next.RUN:
        return
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
