"""Small facts about processes on this host."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from llenergymeasure.backends import contract

if TYPE_CHECKING:
    import psutil

LAUNCHER_MODULE = "llenergymeasure.backends.launcher"


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (one we may not signal still counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_dir_of(proc: psutil.Process) -> str | None:
    """The run directory of a run process of either kind, or None if `proc` is not one.

    A new interpreter has it in the environment it started with (LLEM_RUN_DIR). A child
    forked from the local runner's launcher shows the launcher's starting environment
    and command line instead (a fork cannot change them), but runs in its run directory;
    the launcher itself runs in /. Raises psutil.Error for a process we may not inspect."""
    run_dir = proc.environ().get(contract.ENV_RUN_DIR)
    if run_dir:
        return run_dir
    if LAUNCHER_MODULE in proc.cmdline():
        cwd = proc.cwd()
        return cwd if cwd != os.sep else None
    return None
