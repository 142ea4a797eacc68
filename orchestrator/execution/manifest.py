"""`manifest.json`: the expanded plan and every run's state, rewritten atomically
after each state change so that a crash never leaves it half-written.

Run states: pending -> running -> done | failed (with the reason and its kind,
orchestrator/execution/failures.py); skipped (with the reason) when the study stopped early
on purpose (--fail-fast, too many failures in a row). `--resume` re-runs pending,
skipped and interrupted runs (failed ones with --retry-failed); each earlier try
of a run is kept in its `attempts` (its files under attempts/<run id>/<n>/).

The study's own `status`: running | finished | paused | stopped | interrupted |
failed, with `status_reason`; `sessions` lists every `llem run` / `--resume` that
worked on the study.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from llenergymeasure.backends.clock import utc_now
from llenergymeasure.backends import __version__
from llenergymeasure.backends.atomic import write_json_atomic
from llenergymeasure.backends.contract import SCHEMA_VERSION
from llenergymeasure.orchestrator.study.plan import PlannedRun
from llenergymeasure.orchestrator.study.spec import Study

MANIFEST_FILE = "manifest.json"
STATES = ("pending", "running", "done", "failed", "skipped")
RUN_FIELDS = ("state", "started_at", "finished_at", "exit_code", "error", "failure_kind")



class Manifest:
    def __init__(self, study_dir: Path, data: dict[str, Any]) -> None:
        self.study_dir = study_dir
        self.data = data

    @classmethod
    def create(
        cls, study_dir: Path, study: Study, runs: list[PlannedRun], runner: str, study_file: str,
        analysis: dict[str, Any] | None = None,
        cycles_override: int | None = None,
    ) -> Manifest:
        data = {
            "schema_version": SCHEMA_VERSION,
            "tool_version": __version__,
            "study_name": study.name,
            "study_file": study_file,
            "created_at": utc_now(),
            "runner": runner,
            "status": "running",
            "status_reason": None,
            "sessions": [],
            "execution": study.execution.model_dump(mode="json"),
            # reference experiment and the prices/intensity in force (with their sources)
            "analysis": analysis or {"reference_index": study.reference_index},
            "cycles_override": cycles_override,  # --cycles, so that --resume expands the same plan
            "experiments": [
                {
                    "index": e.index,
                    "id": e.id,
                    "label": e.label,
                    "origin": e.origin,
                    "swept": e.swept,
                    "config": e.config.model_dump(mode="json", exclude_none=True),
                }
                for e in study.experiments
            ],
            "runs": [
                {
                    "run_id": r.run_id,
                    "experiment_index": r.experiment_index,
                    "cycle": r.cycle,
                    "position": r.position,
                    "run_dir": f"runs/{r.run_id}",
                    "state": "pending",
                    "started_at": None,
                    "finished_at": None,
                    "exit_code": None,
                    "error": None,
                    "failure_kind": None,
                    "attempts": [],
                }
                for r in runs
            ],
        }
        m = cls(study_dir, data)
        m.save()
        return m

    @classmethod
    def load(cls, study_dir: Path) -> Manifest:
        return cls(study_dir, json.loads((study_dir / MANIFEST_FILE).read_text()))

    def save(self) -> None:
        write_json_atomic(self.study_dir / MANIFEST_FILE, self.data)

    def run(self, run_id: str) -> dict[str, Any]:
        return next(r for r in self.data["runs"] if r["run_id"] == run_id)

    @property
    def experiments(self) -> list[dict[str, Any]]:
        return self.data["experiments"]

    def experiment(self, index: int) -> dict[str, Any]:
        return self.data["experiments"][index - 1]

    def update(self, run_id: str, state: str, **fields: Any) -> None:
        assert state in STATES, state
        self.run(run_id).update(state=state, **fields)
        self.save()

    def set_status(self, status: str, reason: str | None = None) -> None:
        self.data.update(status=status, status_reason=reason)
        self.save()

    def begin_session(self, **info: Any) -> None:
        self.data.setdefault("sessions", []).append({"started_at": utc_now(), **info})
        self.data.update(status="running", status_reason=None)
        self.save()

    def new_attempt(self, run_id: str) -> int:
        """Move the run's last try into `attempts` and make it pending again; returns
        the number of the try moved (its files go to attempts/<run id>/<n>/)."""
        run = self.run(run_id)
        attempts = run.setdefault("attempts", [])
        attempts.append({k: run.get(k) for k in RUN_FIELDS})
        run.update(state="pending", started_at=None, finished_at=None, exit_code=None, error=None,
                   failure_kind=None)
        self.save()
        return len(attempts)

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for r in self.data["runs"]:
            out[r["state"]] = out.get(r["state"], 0) + 1
        return out
