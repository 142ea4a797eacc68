"""load and plan: a study file -> validated experiments -> the run order.

yaml_file (strict YAML, bounded read) -> load (expansion with sweep, paths relative to
the study file, validation, messages) -> spec (Study, Experiment, Execution); plan (the
order of runs), size (how big a study may get), preflight (can each experiment run where
it would run), the study file's analysis: and slurm: sections and the user's own config.
Imports nothing above it."""
