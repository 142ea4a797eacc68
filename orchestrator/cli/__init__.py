"""`llem`: a thin click layer over the library (parse, call, print); exit codes in app.py.

One module per group of commands: run.py (run, reproduce), slurm.py (status,
collect, resubmit), results.py (results, report, compare), machine.py (config),
build.py (datasets, images, cache), archive.py (archive, site). Heavy imports happen inside each command, so
`llem --help` and a Slurm submission start quickly.
"""

from llenergymeasure.orchestrator.cli import archive, build, machine, results, run, slurm  # noqa: F401  (register commands)
from llenergymeasure.orchestrator.cli.app import main

__all__ = ["main"]
