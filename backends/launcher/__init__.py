"""The local runner's pre-imported run launcher (`python -m llenergymeasure.backends.launcher`).

A new interpreter per run spends seconds importing torch and transformers before it
measures anything. The launcher imports them (and the harness and the PyTorch adapter)
once, in the run's own Python environment, and then forks each run from itself: a
child with its own pid, process group, CUDA context and run directory, which sets
itself up as a run process (environment, working directory, run.log) and runs exactly
what `python -m llenergymeasure.backends` runs (harness/run_process.py).

Forking is only sound from a quiet parent, so the launcher never initialises CUDA,
keeps no thread but its main one and runs no operator; it checks the first two before
every fork (`ForkChecks`) and refuses to fork otherwise (the runner then starts a new
interpreter). A child inherits nothing a run changes: each run is a fork of the same
untouched launcher, never of an earlier run.

    messages.py   the protocol with the orchestrator (pydantic models, length-prefixed)
    preload.py    what the launcher imports, and the checks before each fork
    server.py     the loop: requests in, children forked and reaped, statuses out
    child.py      a forked child becoming a run process
"""
