"""The Python environment each backend's runs use on this machine (local and Slurm runners).

Backends whose pins conflict with the host's (vLLM needs transformers<5.18, the PyTorch
backend's lock has 5.24) run in an environment of their own: a virtual environment
`.venv-<backend>` beside the checkout (or under LLEM_ENV_DIR), created by
`make setup BACKEND=<backend>` from the same lock file its CPU image installs, so both
runners run the same versions. The others run in the orchestrator's own interpreter.
The run imports llem's code from the orchestrator's import root (PYTHONPATH), so an
environment holds only third-party packages.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from llenergymeasure.backends.paths import cache_dir, import_root
from llenergymeasure.backends.table import BackendRow, backend_row

ENV_DIR = "LLEM_ENV_DIR"  # where `.venv-<backend>` environments live (default: the checkout)


def environments_dir() -> Path:
    """LLEM_ENV_DIR, else the source checkout (where `make setup BACKEND=...` creates
    them), else (an installed llem) the cache directory."""
    env = os.environ.get(ENV_DIR)
    if env:
        return Path(env).expanduser()
    root = import_root()
    return root if (root / "Makefile").is_file() else cache_dir() / "envs"


@dataclass(frozen=True)
class BackendEnvironment:
    """Where one backend's runs find Python and its engine."""

    row: BackendRow
    python: Path

    @property
    def own(self) -> bool:
        return self.row.own_environment

    @property
    def create_command(self) -> str:
        return f"make setup BACKEND={self.row.name}"

    def missing(self) -> str | None:
        """Why runs of this backend cannot start here (with the fix), or None."""
        if not self.own or self.python.exists():
            return None
        return (
            f"backend: {self.row.name} runs in its own Python environment ({self.python.parent.parent}), "
            f"which does not exist; create it with `{self.create_command}` (from the checkout)"
        )

    def probe(self, timeout_s: float = 120.0) -> tuple[bool, str]:
        """Whether the engine imports in this environment, and its version or the error."""
        if problem := self.missing():
            return False, problem
        pkg = self.row.engine_package
        code = f"import {pkg}; print(getattr({pkg}, '__version__', 'installed'))"
        try:
            done = subprocess.run([str(self.python), "-c", code], capture_output=True, text=True,
                                  timeout=timeout_s, env=_quiet_env())
        except subprocess.TimeoutExpired:
            return False, f"importing {pkg} took over {timeout_s:.0f} s"
        if done.returncode != 0:
            last = (done.stderr.strip().splitlines() or ["no output"])[-1]
            return False, f"{pkg} does not import in {self.python}: {last}"
        return True, f"{pkg} {done.stdout.strip().splitlines()[-1]} ({self.python})"


def _quiet_env() -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    return env


def environment_for(backend: str) -> BackendEnvironment:
    row = backend_row(backend)
    if not row.own_environment:
        return BackendEnvironment(row, Path(sys.executable))
    return BackendEnvironment(row, environments_dir() / f".venv-{backend}" / "bin" / "python")
