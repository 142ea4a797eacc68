"""A real CPU run of the tiny model beside a real bounded CPU load (tests/support/cpu_load.py):
RAPL measures the whole host, so the result says so (`cpu_energy.scope: host`) and warns
`host_contention` with the core-equivalents other processes used in the window.

Only the loaded case runs for real: on a shared machine (other people's tests, builds)
a quiet run cannot be promised quiet, so the absence of the warning is tested on
synthetic counters (test_measurement_protocol.py)."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.harness.energy import tree_cpu_s
from llenergymeasure.backends.harness.result import RunResult
from llenergymeasure.backends.harness.validity import HOST_CONTENTION_CORES
from tests.backends.test_entrypoint import run_backend
from tests.support.cpu_load import CpuLoad


@pytest.mark.slow
def test_a_cpu_run_beside_a_cpu_load_warns_host_contention(tiny_model, tmp_path):
    cfg = ExperimentConfig(model="llem/tiny-llama", n_prompts=4, max_input_tokens=16, max_output_tokens=8,
                           pytorch={"batch_size": 4}, measurement={"min_window_s": 2.0})
    with CpuLoad(1, max_seconds=300):  # one spinning process: up to a core the run doesn't own
        p = run_backend(tmp_path, cfg.canonical_json())
    assert p.returncode == 0, p.stderr[-3000:]
    result = RunResult.model_validate_json((tmp_path / "result.json").read_text())
    assert result.cpu_energy.scope == "host"
    found = [w for w in result.warnings if w.startswith("host_contention:")]
    assert len(found) == 1, result.warnings
    share = float(re.search(r"used ([0-9.]+) core-equivalents", found[0]).group(1))
    # The spinner always wants a core; the scheduler gives it a fair share of the host's
    # CPUs beside the run's threads, far above the threshold, and never more than the host has.
    assert max(0.25, HOST_CONTENTION_CORES) < share <= os.cpu_count()


BURN = "import time\nwhile time.process_time() < 0.3:\n    pass\n"  # 0.3 s of its own CPU time


def test_the_runs_own_cpu_time_counts_its_children_live_and_reaped():
    before = tree_cpu_s()
    reaped = subprocess.run([sys.executable, "-c", BURN], check=True)
    live = subprocess.Popen([sys.executable, "-c", BURN + "print('burnt', flush=True)\ninput()\n"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert live.stdout.readline() == "burnt\n"  # it has used its 0.3 s and waits on stdin
        # the reaped child's time is in this process's children_user/system; the live
        # one's is read from it (/proc counts in 10 ms ticks: a little under 0.3 s each)
        assert tree_cpu_s() - before >= 0.5 and reaped.returncode == 0
    finally:
        live.communicate("\n")
