"""LLenergyMeasure's library facade.

    import llenergymeasure as llem
    result = llem.run("studies/batch-sweep.yaml")
    result.summary  # pandas DataFrame, one row per configuration

    study = llem.open_study("results/batch-sweep_20261125T140256Z")
    study.summary, study.runs      # the tables behind `llem results`
    llem.write_report(study)       # `llem report`
    table, notes = llem.compare(study, llem.open_study("results/other"))  # `llem compare`
    con = llem.archive.open("~/.local/share/llenergymeasure/archive")  # `llem archive query`
    con.sql("select * from summary").df()

Each function is the same code path as the `llem` command of the same name.

The whole project installs under this one package: `llenergymeasure.orchestrator`
(host side, the `orchestrator/` folder) and `llenergymeasure.backends` (run side,
the `backends/` folder, the only part the images carry). Names here are imported on
first use, so that a run process importing `llenergymeasure.backends` never pays for
the host side (pandas, the docker SDK, ...).
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

# A source checkout holds the parts as top-level folders beside this package
# (orchestrator/, backends/, datasets/; setup.py maps them in when installing): they are
# searched for the subpackages too, so a checkout runs its own code whether it is
# installed or not, and never a mix of two checkouts.
_checkout = Path(__file__).resolve().parent.parent
if (_checkout / "setup.py").is_file() and (_checkout / "backends" / "__init__.py").is_file():
    __path__.append(str(_checkout))

from llenergymeasure.backends import __version__  # noqa: E402

# public name -> module that defines it
_EXPORTS = {
    "ExperimentConfig": "llenergymeasure.backends.config",
    "RunOptions": "llenergymeasure.orchestrator.api",
    "StudyRun": "llenergymeasure.orchestrator.api",
    "run": "llenergymeasure.orchestrator.api",
    "compare": "llenergymeasure.orchestrator.analysis.compare",
    "UserError": "llenergymeasure.orchestrator.errors",
    "write_report": "llenergymeasure.orchestrator.analysis.report",
    "load_study": "llenergymeasure.orchestrator.study.load",
    "StudyResults": "llenergymeasure.orchestrator.analysis.results",
    "open_study": "llenergymeasure.orchestrator.analysis.results",
}

# public name -> subpackage exposed whole (its functions are the library's)
_MODULES = {
    "archive": "llenergymeasure.orchestrator.archive",
}

__all__ = ["__version__", *_EXPORTS, *_MODULES]


def __getattr__(name: str) -> Any:
    if name in _MODULES:
        value = importlib.import_module(_MODULES[name])
    elif name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
    else:
        raise AttributeError(f"module 'llenergymeasure' has no attribute {name!r}")
    globals()[name] = value  # imported once
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
