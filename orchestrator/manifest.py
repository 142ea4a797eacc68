"""`manifest.json`: the expanded plan and every run's state, rewritten atomically
after each state change so that a crash never leaves it half-written.

Run states: pending -> running -> done | failed (with the reason).
"""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from backends import __version__
from backends.atomic import write_json_atomic
from backends.contract import SCHEMA_VERSION
from orchestrator.plan import PlannedRun
from orchestrator.study import Study

MANIFEST_FILE = "manifest.json"
STATES = ("pending", "running", "done", "failed")


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class Manifest:
    def __init__(self, study_dir: Path, data: dict[str, Any]) -> None:
        self.study_dir = study_dir
        self.data = data

    @classmethod
    def create(
        cls, study_dir: Path, study: Study, runs: list[PlannedRun], runner: str, study_file: str,
        analysis: dict[str, Any] | None = None,
    ) -> Manifest:
        data = {
            "schema_version": SCHEMA_VERSION,
            "tool_version": __version__,
            "study_name": study.name,
            "study_file": study_file,
            "created_at": utc_now(),
            "runner": runner,
            "execution": study.execution.model_dump(mode="json"),
            # reference experiment and the prices/intensity in force (with their sources)
            "analysis": analysis or {"reference_index": study.reference_index},
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

    def counts(self) -> dict[str, int]:
        out = {s: 0 for s in STATES}
        for r in self.data["runs"]:
            out[r["state"]] += 1
        return out
