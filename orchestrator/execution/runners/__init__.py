"""The runners that execute one run at a time: local (a process) and Docker (a
container). Their interface is base.py; the Slurm runner is in execution/slurm/,
the parallel-GPU wrapper in execution/parallel.py, the choice in choose_runner.py."""
