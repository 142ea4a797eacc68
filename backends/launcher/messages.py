"""The protocol between the local runner and its launcher.

One control socket, a socketpair the runner makes and the launcher inherits: the
launcher sends `Ready` once its imports are done; after that the runner sends on it
only, for each run, a new socket of that run's own (passed with SCM_RIGHTS). On a run's
socket the runner sends one `LaunchRequest`; the forked child answers `Launched` once
it leads its own process group (or the launcher answers `Refused` and forks nothing);
when the child has exited, the launcher sends `Exited`. A socket per run keeps runs that
several threads start at once (parallel GPUs) apart, with no dispatcher on either side.

Every message is a pydantic model, sent as JSON after its length (4 bytes, big-endian).
"""

from __future__ import annotations

import json
import socket
import struct
from typing import Literal

from llenergymeasure.backends.harness.process_start import ForkChecks
from pydantic import BaseModel, ConfigDict

_LENGTH = struct.Struct(">I")
MAX_MESSAGE = 64 * 2**20  # an environment with a large experiment is well under this


class _Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Ready(_Message):
    """The launcher finished its imports and waits for runs."""

    kind: Literal["ready"] = "ready"
    pid: int
    import_s: float  # how long the imports took (what each run no longer pays)


class LaunchRequest(_Message):
    """Start one run: everything a `subprocess.Popen` of the run would be given."""

    kind: Literal["launch"] = "launch"
    env: dict[str, str]  # the run's whole environment (it replaces the launcher's)
    cwd: str  # the run directory
    log_path: str  # run.log: the child's stdout and stderr


class Launched(_Message):
    """The run's process exists and leads its own process group (pgid == pid)."""

    kind: Literal["launched"] = "launched"
    pid: int
    launcher_pid: int
    checks: ForkChecks  # what the launcher verified just before forking it


class Refused(_Message):
    """Nothing was forked (the run should start another way)."""

    kind: Literal["refused"] = "refused"
    reason: str
    checks: ForkChecks | None = None


class Exited(_Message):
    """The run's process ended (and was reaped); `returncode` as subprocess.Popen has it:
    the exit code, or -N for a process ended by signal N."""

    kind: Literal["exited"] = "exited"
    pid: int
    returncode: int


Message = Ready | LaunchRequest | Launched | Refused | Exited
_BY_KIND: dict[str, type[_Message]] = {m.model_fields["kind"].default: m for m in (Ready, LaunchRequest, Launched,
                                                                                  Refused, Exited)}


class ProtocolError(Exception):
    """The other side sent something that is not a message of this protocol."""


def send(sock: socket.socket, message: _Message) -> None:
    data = message.model_dump_json().encode()
    sock.sendall(_LENGTH.pack(len(data)) + data)


def receive(sock: socket.socket) -> Message | None:
    """The next message, or None when the other side closed the socket (or died)."""
    head = _read_exactly(sock, _LENGTH.size)
    if head is None:
        return None
    (size,) = _LENGTH.unpack(head)
    if size > MAX_MESSAGE:
        raise ProtocolError(f"a message of {size} bytes (at most {MAX_MESSAGE})")
    body = _read_exactly(sock, size)
    if body is None:
        return None
    try:
        data = json.loads(body)
        return _BY_KIND[data["kind"]].model_validate(data)  # type: ignore[return-value]
    except (ValueError, TypeError, KeyError) as e:
        raise ProtocolError(f"not a message: {e}") from None


def _read_exactly(sock: socket.socket, n: int) -> bytes | None:
    chunks, left = [], n
    while left:
        try:
            chunk = sock.recv(left)
        except ConnectionResetError:
            return None
        if not chunk:
            return None
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def pass_socket(control: socket.socket, run_socket: socket.socket) -> None:
    """Hand one end of a run's socket to the launcher over the control socket."""
    socket.send_fds(control, [b"R"], [run_socket.fileno()])


def take_socket(control: socket.socket) -> socket.socket | None:
    """The next run socket from the control socket; None when the runner closed it."""
    try:
        data, fds, _, _ = socket.recv_fds(control, 1, 1)
    except ConnectionResetError:
        return None
    if not data:
        return None
    if not fds:
        raise ProtocolError("a control message without a socket")
    return socket.socket(fileno=fds[0])
