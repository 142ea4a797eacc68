"""Apptainer/Singularity on a node: the local runner's process, inside a `.sif`
built from the same backend image (`apptainer build llem.sif docker-daemon://IMAGE`).
The run directory is bound at the same path, so the contract is unchanged;
`--nv` brings the node's NVIDIA driver in. Not exercised by the tests here (no
Apptainer on this machine)."""

from __future__ import annotations

import shutil
from pathlib import Path

from orchestrator.runners.local import LocalRunner


class ApptainerRunner(LocalRunner):
    name = "apptainer"

    def __init__(self, sif: str) -> None:
        super().__init__()
        self.sif = sif
        self.binary = shutil.which("apptainer") or shutil.which("singularity") or "apptainer"

    def command(self, argv: list[str], run_dir: Path) -> list[str]:
        run_dir = run_dir.resolve()
        return [self.binary, "exec", "--nv", "--bind", f"{run_dir}:{run_dir}", self.sif, "python", *argv]
