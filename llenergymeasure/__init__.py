"""LLenergyMeasure's library facade.

    import llenergymeasure as llem
    result = llem.run("studies/batch-sweep.yaml")
    result.summary  # pandas DataFrame, one row per configuration

`llem.run` is the same code path as the `llem run` command.
"""

from backends import __version__
from backends.config import ExperimentConfig
from orchestrator.api import StudyRun, run
from orchestrator.errors import UserError
from orchestrator.study import load_study

__all__ = ["ExperimentConfig", "StudyRun", "UserError", "__version__", "load_study", "run"]
