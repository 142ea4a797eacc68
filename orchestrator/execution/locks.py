"""Locks that keep two studies from measuring on the same device at once, and two
orchestrators from working on the same study directory.

Device locks: one lock file per device in a host-wide directory ($LLEM_LOCK_DIR,
default /tmp/llem-locks, shared by every user of the machine), held with flock(2)
for a study's whole life, gaps between runs included. GPUs are locked by UUID
(by CUDA index where NVML can't tell the UUID); CPU studies take the host lock
`cpu`, since two CPU studies on one host disturb each other's timing and share the
RAPL package counters. A GPU study does not take `cpu`: studies on different GPUs
of one host may run side by side, which is the point of per-GPU locks.

flock is released by the kernel when its holder dies, however it dies, so there
are no stale locks to clean up after a crash or a reboot.
"""

from __future__ import annotations

import fcntl
import json
import os
import platform
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.orchestrator.errors import UserError

ENV_LOCK_DIR = "LLEM_LOCK_DIR"
DEFAULT_LOCK_DIR = Path("/tmp/llem-locks")
WAIT_POLL_S = 1.0
WAIT_NOTE_EVERY_S = 60.0
CPU = "cpu"


def _where(d: Path) -> str:
    return f"{ENV_LOCK_DIR}={d}" if os.environ.get(ENV_LOCK_DIR) else f"the device lock directory {d}"


def _bad_lock_dir(d: Path, why: str) -> UserError:
    return UserError(f"{_where(d)}: {why}; point {ENV_LOCK_DIR} at a directory every llem user on this "
                     f"machine can write (default {DEFAULT_LOCK_DIR})")


def lock_dir() -> Path:
    """The device lock directory, created if missing; UserError (exit 2) naming it when
    it is not a directory llem can create lock files in, before any lock is taken."""
    d = Path(os.environ.get(ENV_LOCK_DIR) or DEFAULT_LOCK_DIR)
    if not d.exists():
        above = next((p for p in d.parents if p.exists()), None)
        if above is not None and not above.is_dir():
            raise _bad_lock_dir(d, f"{above} is a file, not a directory")
        try:
            d.mkdir(parents=True, exist_ok=True)
            if d == DEFAULT_LOCK_DIR:
                os.chmod(d, 0o1777)  # shared by every user, like /tmp itself
        except OSError as e:
            raise _bad_lock_dir(d, f"cannot be created ({e.strerror or type(e).__name__})") from None
    if not d.is_dir():
        raise _bad_lock_dir(d, "is a file, not a directory")
    if not os.access(d, os.W_OK | os.X_OK):
        raise _bad_lock_dir(d, "is not writable for this user")
    return d


class Busy(UserError):
    """The lock is held by someone else; the message names the holder."""


def _holder(path: Path) -> str:
    try:
        info = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return "another llem process"
    if not isinstance(info, dict) or not info.get("pid"):
        return "another llem process"
    what = info.get("study_dir") or "a study"
    return f"{what} (pid {info['pid']} on {info.get('host')}, since {info.get('since')})"


class FileLock:
    """One flock'ed file; writes who holds it into the file for the next comer."""

    def __init__(self, path: Path, info: dict[str, Any]) -> None:
        self.path, self.info, self.fd = path, info, None

    def _open(self) -> int:
        try:
            # Opened without O_CREAT when it exists: Linux's fs.protected_regular refuses
            # O_CREAT on another user's file in a sticky shared directory such as /tmp.
            return os.open(self.path, os.O_RDWR)
        except FileNotFoundError:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                os.fchmod(fd, 0o666)  # others must be able to open it to wait on it
            except OSError:
                pass
            return fd

    def try_acquire(self) -> bool:
        fd = self._open()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        try:  # who holds it, for the next comer's message; best effort (the disk may be full)
            os.ftruncate(fd, 0)
            os.pwrite(fd, json.dumps(self.info).encode(), 0)
        except OSError:
            pass
        self.fd = fd
        return True

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = None


def _info(study_dir: Path | str | None) -> dict[str, Any]:
    return {"pid": os.getpid(), "host": platform.node(), "study_dir": str(study_dir or ""),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


class DeviceLocks:
    """All of a study's devices, or none: acquired in a fixed (sorted) order, so two
    waiting studies can't deadlock; a refusal releases what was already taken."""

    def __init__(self, devices: Iterable[str], study: str | Path | None = None) -> None:
        self.devices = sorted(set(devices))
        self.locks = [FileLock(lock_dir() / f"{_safe(d)}.lock", _info(study)) for d in self.devices]

    def acquire(self, wait: bool = False, notify: Notify | None = None,
                timeout_s: float | None = None) -> None:
        """Take every lock. Busy (exit 2) naming the holder, or with `wait` queue until free."""
        t0 = time.monotonic()
        for device, lock in zip(self.devices, self.locks):
            noted: float | None = None
            while not self._try(lock):
                holder = _holder(lock.path)
                if not wait or (timeout_s is not None and time.monotonic() - t0 > timeout_s):
                    self.release()
                    raise Busy(
                        f"device {device} is in use by {holder}; two studies must not measure on "
                        "the same device at once. Wait for it to finish, or pass --wait to queue "
                        "behind it"
                    )
                if notify and (noted is None or time.monotonic() - noted >= WAIT_NOTE_EVERY_S):
                    notify(f"waiting for device {device}: in use by {holder}")
                    noted = time.monotonic()
                time.sleep(WAIT_POLL_S)

    def _try(self, lock: FileLock) -> bool:
        """One attempt at one lock; a lock file that cannot be opened is the lock directory's
        fault (e.g. a read-only file system): UserError naming it, with nothing held."""
        try:
            return lock.try_acquire()
        except OSError as e:
            self.release()
            raise _bad_lock_dir(lock.path.parent, f"cannot open the lock file {lock.path.name} "
                                f"({e.strerror or type(e).__name__})") from None

    def release(self) -> None:
        for lock in self.locks:
            lock.release()

    def __enter__(self) -> DeviceLocks:
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


STUDY_LOCK_FILE = ".llem.lock"


def lock_study_dir(study_dir: Path) -> FileLock:
    """Held while an orchestrator works on a study; a second one (e.g. a --resume
    while the study still runs) is refused, never allowed to write beside it."""
    lock = FileLock(study_dir / STUDY_LOCK_FILE, _info(study_dir))
    if not lock.try_acquire():
        raise Busy(f"{study_dir}: another llem is working on this study ({_holder(lock.path)}); "
                   "wait for it to finish (or stop it) before resuming")
    return lock


def device_keys(gpu_uuids: list[str], device: str) -> list[str]:
    """Lock names for one experiment: its GPUs' UUIDs, its CUDA device where the UUIDs
    are unknown (no NVML), or the host CPU."""
    if gpu_uuids:
        return [f"gpu-{u}" for u in gpu_uuids]
    if device.startswith("cuda"):
        return [f"gpu-{device.replace(':', '')}"]
    return [CPU]
