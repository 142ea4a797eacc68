"""LLenergyMeasure's library facade.

    import llenergymeasure as llem
    result = llem.run("studies/batch-sweep.yaml")
    result.summary  # pandas DataFrame, one row per configuration

    study = llem.open_study("results/batch-sweep_20261125T140256Z")
    study.summary, study.runs      # the tables behind `llem results`
    llem.write_report(study)       # `llem report`
    table, notes = llem.compare(study, llem.open_study("results/other"))  # `llem compare`

Each function is the same code path as the `llem` command of the same name.
"""

from backends import __version__
from backends.config import ExperimentConfig
from orchestrator.api import StudyRun, run
from orchestrator.compare import compare
from orchestrator.errors import UserError
from orchestrator.report import write_report
from orchestrator.study import load_study
from orchestrator.study_results import StudyResults, open_study

__all__ = ["ExperimentConfig", "StudyResults", "StudyRun", "UserError", "__version__", "compare", "load_study",
           "open_study", "run", "write_report"]
