"""A child just forked from the launcher becoming a run process.

It ends up as `subprocess.Popen` would have started the run (own session and process
group, stdout and stderr into run.log, the run directory as working directory, the
run's environment and nothing of the launcher's), and with what a new interpreter has
fresh and a fork would share with its parent reseeded. Whatever else the launcher
holds is as a new interpreter has it just after the same imports, because the launcher
never touched it: torch's thread settings and random generator, logging, warnings,
signal handlers (torch's generator starts from the same fixed seed in every new
process; the harness seeds every generator from the experiment anyway).
"""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

from llenergymeasure.backends import contract
from llenergymeasure.backends.harness.process_start import ForkChecks, mark_forked
from llenergymeasure.backends.launcher.messages import Launched, LaunchRequest, send

# `python -m llenergymeasure.backends`'s argv[0]: what the run would see as its program
RUN_MAIN = str(Path(__file__).resolve().parents[1] / "__main__.py")
SETUP_FAILED = 127  # the child's exit code when it could not become a run (it never said Launched)


def become_run(request: LaunchRequest, run_socket: socket.socket, launcher_pid: int, checks: ForkChecks) -> None:
    """Set this freshly forked process up as the run, then tell the runner its pid (which
    is then also its process group's id, for the runner's stop_process_group).

    Runs in the child only, once it has closed the launcher's sockets; the caller ends
    the child if this raises (it must never return into the launcher's loop)."""
    os.setsid()
    _redirect_output(request.log_path)
    os.chdir(request.cwd)
    _replace_environment(request.env, launcher_pid)
    _fresh_interpreter_state(request.cwd)
    mark_forked(launcher_pid, checks)
    send(run_socket, Launched(pid=os.getpid(), launcher_pid=launcher_pid, checks=checks))
    run_socket.close()


def _redirect_output(log_path: str) -> None:
    """stdout and stderr into run.log, which the runner has just created, as Popen would."""
    sys.stdout.flush()
    sys.stderr.flush()
    fd = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    os.close(fd)


def _replace_environment(env: dict[str, str], launcher_pid: int) -> None:
    """The run's environment, whole. Its parent is the launcher now: the run watches the
    launcher (parent_watch), which watches the orchestrator, so a run still never
    outlives its orchestrator."""
    os.environ.clear()
    os.environ.update(env)
    os.environ[contract.ENV_PARENT_PID] = str(launcher_pid)


def _fresh_interpreter_state(cwd: str) -> None:
    """What a new `python -m llenergymeasure.backends` would have of its own: its argv, its
    working directory first on sys.path (as -m puts it), a random seed of its own for
    numpy's global generator (Python's `random` reseeds itself in a forked child)."""
    sys.argv = [RUN_MAIN]
    if sys.path:
        sys.path[0] = cwd  # under -m, sys.path[0] is the working directory the process started in
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed()  # from the OS's entropy, as numpy seeds itself when imported
