"""Stripping what identifies a person or a machine from what goes into an archive
(the default; `--keep-identity` keeps it).

Fields that are nothing but identity (host names, GPU UUIDs, environment variables,
session pids) are never copied. Every other string (error messages, paths in the
configuration, the study file) is scrubbed of the names that identify: this machine's
host and user names and home directory, the hosts and users the study itself records
(its sessions, its runs' environments, `/home/<user>` paths), GPU UUIDs, and the values
of secret environment variables. Names of three characters or more are replaced
wherever they occur; shorter ones only as whole words (a host called `vm` must not
turn `llvm` into `ll<host>`).
"""

from __future__ import annotations

import getpass
import os
import re
import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llenergymeasure.backends.secrets import secret_values

HOST, USER, HOME = "<host>", "<user>", "~"
GPU_UUID = re.compile(r"\b(GPU|MIG)-[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\b")
# a home directory at the start of a path: /home/<user>, /Users/<user>, /root
HOME_PATH = re.compile(r"(?<![\w.~-])(?:/home/|/Users/)([^/\s\"'<>:;,|]+)|(?<![\w.~-])/root(?=[/\s\"'<>:;,|)]|$)")
LONG_ENOUGH = 3


def machine_names() -> tuple[list[str], list[str], list[str]]:
    """(host names, user names, home directories) of the machine llem runs on."""
    hosts = [socket.gethostname(), os.uname().nodename]
    users = []
    for get in (getpass.getuser, lambda: os.environ.get("USER", ""), lambda: os.environ.get("LOGNAME", "")):
        try:
            users.append(get())
        except (KeyError, OSError):  # no user name for this uid (some containers)
            pass
    homes = [str(Path.home())]
    return hosts, users, homes


def _pattern(tokens: Iterable[str]) -> re.Pattern[str] | None:
    parts = []
    for t in sorted({t for t in tokens if t}, key=len, reverse=True):
        parts.append(re.escape(t) if len(t) >= LONG_ENOUGH else rf"(?<![\w]){re.escape(t)}(?![\w])")
    return re.compile("|".join(parts)) if parts else None


@dataclass
class Scrubber:
    """Replaces identifying names in text; `keep=True` (--keep-identity) leaves text as it is."""

    hosts: list[str] = field(default_factory=list)
    users: list[str] = field(default_factory=list)
    homes: list[str] = field(default_factory=list)
    keep: bool = False
    _compiled: tuple[Any, Any, Any] | None = field(default=None, init=False, repr=False)

    @classmethod
    def for_machine(cls, keep: bool = False) -> Scrubber:
        hosts, users, homes = machine_names()
        return cls(hosts, users, homes, keep)

    def learn(self, hosts: Iterable[str | None] = (), texts: Iterable[str | None] = ()) -> None:
        """Add the hosts a study records, and the users named by home paths in its texts."""
        self.hosts += [h for h in hosts if h]
        for text in texts:
            for m in HOME_PATH.finditer(text or ""):
                if m.group(1):
                    self.users.append(m.group(1))
        self._compiled = None

    def _patterns(self) -> tuple[Any, Any, Any]:
        if self._compiled is None:
            homes = sorted({h.rstrip("/") for h in self.homes if h and h.rstrip("/")}, key=len, reverse=True)
            home = re.compile("|".join(rf"(?<![\w.~/-]){re.escape(h)}(?![\w.-])" for h in homes)) if homes else None
            self._compiled = (home, _pattern(self.hosts), _pattern(self.users))
        return self._compiled

    def text(self, value: str) -> str:
        for secret in secret_values():  # secrets go, whatever --keep-identity says
            value = value.replace(secret, "<redacted>")
        if self.keep or not value:
            return value
        home, hosts, users = self._patterns()
        if home is not None:
            value = home.sub(HOME, value)
        value = HOME_PATH.sub(HOME, value)
        value = GPU_UUID.sub(lambda m: f"{m.group(1)}-<redacted>", value)
        if hosts is not None:
            value = hosts.sub(HOST, value)
        if users is not None:
            value = users.sub(USER, value)
        return value

    def row(self, row: dict[str, Any]) -> dict[str, Any]:
        """Every string value of a table row, scrubbed (JSON text columns included)."""
        return {k: self.text(v) if isinstance(v, str) else v for k, v in row.items()}
