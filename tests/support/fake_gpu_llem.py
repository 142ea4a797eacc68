"""TEST SUPPORT: the real `llem` command on a fake GPU host (this machine has no GPU).

    python -m tests.support.fake_gpu_llem STATE_JSON [llem arguments...]

Only the hardware is faked, and named so: the host's GPU control is a FakeGpuControl
whose state lives in STATE_JSON (shared by every process started on it, so that the
next `llem` sees what a killed one left), and the local runner's runs use that host's
first GPU (LocalRunner.gpu_uuids; the run itself still executes on the CPU, with the
real tiny model). Everything else is the real CLI: study loading, device locks, the
session, the runner, signals, exit codes.
"""

from __future__ import annotations

import sys
from pathlib import Path


def main() -> None:
    from llenergymeasure.orchestrator.execution import gpu_control
    from llenergymeasure.orchestrator.execution.runners.local import LocalRunner
    from tests.support.fakes import FakeGpuControl

    state = Path(sys.argv[1])
    gpu_control.open_control = lambda: FakeGpuControl(state_path=state)  # type: ignore[assignment]
    first = FakeGpuControl(state_path=state).uuids()[0]
    LocalRunner.gpu_uuids = lambda self, config: [first]  # type: ignore[method-assign]

    from llenergymeasure.orchestrator.cli import main as llem

    sys.argv = ["llem", *sys.argv[2:]]
    llem()


if __name__ == "__main__":
    main()
