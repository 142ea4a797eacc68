"""TEST HOOK: inject a fault into a run, for the fault-injection suite (tests/execution/test_faults*.py).

Read only from the LLEM_TEST_FAULT environment variable, which llem itself never
sets; without it every function here is a no-op. Grammar (comma-separated):

    <run id or *>:<action>[=<arg>][@<phase>]     e.g.  e02-c1:crash@load,e03-c1:sleep=60

phase: `start` (default; before the run begins, so hook-driven runs are cheap: a new
interpreter has not imported torch yet) or `load` (after the model loaded: a fault in
the middle of a real run).

actions:
  crash       raise an exception (the harness writes error.json and exits 1)
  exit=N      os._exit(N): die at once, leaving no error.json (like a segfault)
  kill        SIGKILL this process (what the kernel's OOM killer does)
  sleep=S     sleep S seconds silently, then carry on
  busy=S      print a line every 0.5 s for S seconds (alive, not progressing), then carry on
  hang        block forever without output (a deadlock); SIGTERM still ends it
  hang-hard   ignore SIGTERM, then block forever (stuck in native code): needs SIGKILL
  threads=N   torch.set_num_threads(N), then carry on: a run changing a process-wide
              setting, which no later run may inherit (tests/execution/test_launcher.py)
  leak=MB     allocate MB MiB, touch it and keep it until the process ends, then carry on
"""

from __future__ import annotations

import os
import signal
import sys
import time

ENV = "LLEM_TEST_FAULT"  # == backends.contract.ENV_TEST_FAULT (not imported: keeps this import-light)


class InjectedFault(RuntimeError):
    """The `crash` action's exception."""


_LEAKED: list[bytes] = []  # the `leak` action's memory, held until the process ends


def _mine(phase: str) -> list[tuple[str, str | None]]:
    spec = os.environ.get(ENV, "")
    # LLEM_RUN_ID: inside a container the run directory is always /llem/run
    run_id = os.environ.get("LLEM_RUN_ID") or os.path.basename(os.path.normpath(os.environ.get("LLEM_RUN_DIR", ".")))
    out = []
    for item in filter(None, (s.strip() for s in spec.split(","))):
        target, _, rest = item.partition(":")
        action, _, at = rest.partition("@")
        name, _, arg = action.partition("=")
        if target in (run_id, "*") and (at or "start") == phase:
            out.append((name, arg or None))
    return out


def inject(phase: str) -> None:
    for name, arg in _mine(phase):
        print(f"llem: TEST HOOK {ENV}: injecting '{name}' at {phase}", file=sys.stderr, flush=True)
        if name == "crash":
            raise InjectedFault(f"injected fault at {phase} ({ENV} test hook)")
        if name == "exit":
            os._exit(int(arg or 1))
        if name == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if name == "sleep":
            time.sleep(float(arg or 3600))
        if name == "busy":
            end = time.monotonic() + float(arg or 3600)
            while time.monotonic() < end:
                print("llem: TEST HOOK busy", file=sys.stderr, flush=True)
                time.sleep(0.5)
        if name == "threads":
            import torch

            torch.set_num_threads(int(arg or 1))
        if name == "leak":
            _LEAKED.append(b"\x01" * (int(arg or 100) * 2**20))  # written, so resident
        if name in ("hang", "hang-hard"):
            if name == "hang-hard":
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
            while True:
                time.sleep(3600)
