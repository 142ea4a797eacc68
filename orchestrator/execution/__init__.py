"""execute: running a plan. session (locks, study directory, dispatch) -> loop (one
run at a time) or a whole-plan runner (parallel.py, slurm/); runners/ (local,
Docker) behind runners/base.py; manifest + layout (the study directory's records
and paths), recording + failures + outcome (how a run ended), resume, locks,
signals, watchdog, baselines; machine (what this host offers). Never imports analysis."""
