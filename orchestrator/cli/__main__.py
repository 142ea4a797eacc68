"""`python -m llenergymeasure.orchestrator.cli`: the `llem` command without its console script."""

from llenergymeasure.orchestrator.cli import main

main()
