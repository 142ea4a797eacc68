"""Studies for the archive tests, built in seconds: the recorded multi-backend GPU study
(tests/support/recorded_study.py; no measurement behind it) with identity planted where
real studies carry it: the session's host and the runs' hostnames, a Slurm node name, a
study file under a home directory, errors naming home paths, users, hosts and GPU UUIDs."""

from __future__ import annotations

import getpass
import hashlib
import json
import socket
from pathlib import Path

from llenergymeasure.backends.contract import RESULT_FILE
from llenergymeasure.orchestrator.execution.manifest import Manifest

PLANTED_HOST = "llem-planted-host-7f3a"
PLANTED_USER = "llem-planted-user"
PLANTED_UUID = "GPU-8a1f2b3c-4d5e-6f70-8192-a3b4c5d6e7f8"


def plant_identity(study_dir: Path) -> None:
    m = Manifest.load(study_dir)
    m.begin_session(command="run", pid=4242, host=PLANTED_HOST, devices=[PLANTED_UUID],
                    study_file=f"/home/{PLANTED_USER}/studies/recorded.yaml", execution={})
    m.study_base_dir = f"/home/{PLANTED_USER}/studies"
    failed = next(r for r in m.runs if r.state == "failed")
    failed.error = (f"OutOfMemoryError on {socket.gethostname()} ({PLANTED_HOST}) for {getpass.getuser()}: "
                    f"see {Path.home()}/.cache/llem/x.log and /home/{PLANTED_USER}/run.log on {PLANTED_UUID}")
    m.set_status("finished")
    for run in m.runs:
        path = study_dir / run.run_dir / RESULT_FILE
        if not path.exists():
            continue
        result = json.loads(path.read_text())
        env = result["environment"]
        env["hostname"] = PLANTED_HOST if run.cycle != 2 else socket.gethostname()
        env["env"] = {"SLURMD_NODENAME": PLANTED_HOST, "CUDA_VISIBLE_DEVICES": "0"}
        env["gpus"] = [{**g, "uuid": PLANTED_UUID} for g in env.get("gpus", [])]
        if run.cycle == 1:
            result["warnings"] = [f"power_capping: {PLANTED_UUID} on {PLANTED_HOST}: capped"]
        path.write_text(json.dumps(result))




def checksums(root: Path) -> dict[str, str]:
    """Every file under `root` (relative path -> SHA-256): what 'unchanged' means."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
