"""Apptainer/Singularity on a node: the local runner's process, inside a `.sif`
built from the same backend image (`apptainer build llem.sif docker-daemon://IMAGE`).
The run directory is bound read-write at the same path, llem's cache (built-in
models, engines) and data directories read-only at theirs, so the contract and
every path in the experiment are unchanged; `--nv` brings the node's NVIDIA
driver in. Not run here (Apptainer is not in Debian's packages and its releases
can't be fetched): tests check the command line only."""

from __future__ import annotations

import shutil
from pathlib import Path

from llenergymeasure.backends.paths import cache_dir, data_dir
from llenergymeasure.orchestrator.execution.runners.local import LocalRunner


class ApptainerRunner(LocalRunner):
    name = "apptainer"
    host_environments = False  # the .sif image carries each backend's packages
    pre_imports = False  # each run is `apptainer exec`: nothing here to fork it from

    def __init__(self, sif: str) -> None:
        super().__init__()
        self.sif = sif
        self.binary = shutil.which("apptainer") or shutil.which("singularity") or "apptainer"

    def command(self, argv: list[str], run_dir: Path, backend: str = "pytorch") -> list[str]:
        run_dir = run_dir.resolve()
        binds = [f"{run_dir}:{run_dir}:rw"] + [f"{d}:{d}:ro" for d in (cache_dir().resolve(), data_dir().resolve())
                                                if d.is_dir()]
        return [self.binary, "exec", "--nv", "--bind", ",".join(binds), self.sif, "python", *argv]
