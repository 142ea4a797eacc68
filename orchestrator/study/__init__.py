"""load and plan: a study file -> validated experiments -> the run order.

yaml_file (strict YAML) -> load (expansion with sweep, validation, messages) -> spec
(Study, Experiment, Execution); plan (the order of runs), size (how big a study may
get), preflight (can each experiment run where it would run), the study file's
analysis: section and the user's own config. Imports nothing above it."""
