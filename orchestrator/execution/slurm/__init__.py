"""Running a study's plan as one Slurm job array: settings, the generated batch
script, submission, following the array's states, and the per-task entrypoint."""
