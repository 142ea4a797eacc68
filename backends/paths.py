"""Where llem keeps built models, fetched datasets and its shipped data."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from llenergymeasure.backends import contract


def cache_dir() -> Path:
    env = os.environ.get(contract.ENV_CACHE_DIR)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "llenergymeasure"


def data_dir() -> Path:
    """Fetched datasets (llem datasets fetch ...)."""
    env = os.environ.get(contract.ENV_DATA_DIR)
    return Path(env).expanduser() if env else cache_dir() / "datasets"


def repo_data_dir() -> Path:
    """The repository's `datasets/` folder: shipped prompt-set data and provenance.

    It sits beside `backends/` in the source tree and in every image.
    """
    env = os.environ.get("LLEM_SHIPPED_DATASETS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "datasets"


def import_root() -> Path:
    """The directory `llenergymeasure` is imported from: a source checkout's root, or the
    site-packages it is installed in. A process started with it first on its path
    imports the same code as the process that started it."""
    package = sys.modules["llenergymeasure"]
    return Path(list(package.__path__)[0]).resolve().parent
