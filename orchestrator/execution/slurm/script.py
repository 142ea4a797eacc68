"""The generated batch script: one array task per run, readable and reusable.

It is saved in the study directory (`slurm/array-<n>.sh`); `sbatch` of that file
again re-runs exactly those runs into the same study directory.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from llenergymeasure.backends import __version__
from llenergymeasure.backends.paths import import_root
from llenergymeasure.orchestrator.execution.layout import StudyLayout
from llenergymeasure.orchestrator.execution.slurm.settings import SlurmSettings

def sbatch_options(s: SlurmSettings, name: str, n_tasks: int, logs: Path) -> list[str]:
    throttle = f"%{s.max_concurrent}" if s.max_concurrent else ""
    opts = [
        f"--job-name=llem-{name}",
        f"--array=0-{n_tasks - 1}{throttle}",
        f"--output={logs}/%A_%a.out",
        f"--time={s.time_limit}",
        "--nodes=1",
        "--ntasks=1",
        f"--cpus-per-task={s.cpus_per_run}",
        # a run Slurm restarts by itself (node failure, preemption) would measure twice into one
        # run directory: it ends NODE_FAIL/PREEMPTED instead, and `--resume --retry-failed` reruns it
        "--no-requeue",
    ]
    if s.partition:
        opts.append(f"--partition={s.partition}")
    if s.account:
        opts.append(f"--account={s.account}")
    if s.qos:
        opts.append(f"--qos={s.qos}")
    if s.mem_per_run:
        opts.append(f"--mem={s.mem_per_run}")
    if s.gpus_per_run:
        # GPUs allocated through gres/--gpus belong to this task alone (Slurm does not
        # share a GPU between jobs unless the cluster configures sharding/MPS)
        opts.append(f"--gres=gpu:{s.gpus_per_run}" if s.gpu_option == "gres" else f"--gpus={s.gpus_per_run}")
    opts.extend(s.extra_sbatch)
    return opts


def render(s: SlurmSettings, study_dir: Path, study_name: str, run_ids: list[str], submission: int) -> str:
    logs = StudyLayout(study_dir).slurm_logs
    python = s.python or sys.executable
    lines = [
        "#!/bin/bash",
        f"# llem {__version__}: study '{study_name}', submission {submission}: one array task per run.",
        "# Array index i runs RUN_IDS[i]; the order is the study's execution.order.",
        "# Re-submitting this file re-runs these runs into the same study directory.",
        *(f"#SBATCH {o}" for o in sbatch_options(s, study_name, len(run_ids), logs)),
        "",
        "set -eu",
        f"STUDY_DIR={shlex.quote(str(study_dir))}",
        "RUN_IDS=(",
        *(f"  {r}" for r in run_ids),
        ")",
        'RUN_ID="${RUN_IDS[$SLURM_ARRAY_TASK_ID]}"',
        "# a node that cannot see the study directory fails here, by name",
        'if [ ! -d "$STUDY_DIR/runs" ]; then',
        '  echo "llem: $STUDY_DIR is not visible on $(hostname); put results on storage the nodes share (-o)" >&2',
        "  exit 3",
        "fi",
        *([] if s.python else [  # this Python: the same llenergymeasure as the orchestrator that submitted it
            "# the same llenergymeasure as the orchestrator that submitted this (its checkout, or its install)",
            f"export PYTHONPATH={shlex.quote(str(import_root()))}${{PYTHONPATH:+:$PYTHONPATH}}"]),
        f"exec {shlex.quote(python)} -m llenergymeasure.orchestrator.execution.slurm.task \"$STUDY_DIR\" \"$RUN_ID\" --execute {s.execute}"
        + (f" --sif {shlex.quote(s.sif)}" if s.sif else ""),
        "",
    ]
    return "\n".join(lines)
