"""Loading a study (or single-experiment) YAML file into validated experiments.

A file with `sweep:` or `experiments:` is a study; otherwise it is one
experiment. Every point is expanded first, then validated; all invalid points
are reported together, each with the sweep values that produced it, before
anything runs.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from llenergymeasure.backends.config import ExperimentConfig
from llenergymeasure.backends.table import BACKENDS
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.analysis_section import parse_analysis
from llenergymeasure.orchestrator.study.messages import format_errors
from llenergymeasure.orchestrator.study.spec import Execution, Experiment, Study
from llenergymeasure.orchestrator.study.sweep import DEFAULT_BACKEND, Point, deep_merge, expand, parse_axes
from llenergymeasure.orchestrator.study.yaml_file import read_yaml

STUDY_KEYS = ("name", "sweep", "experiments", "execution", "analysis", "lock", "slurm")
MAX_ERRORS_SHOWN = 10


def _check_top_level(data: dict[str, Any], path: Path) -> None:
    known = [*ExperimentConfig.model_fields, *STUDY_KEYS]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{path}: {key}: unknown key{hint}; remove it or fix its spelling")


def _study_name(data: dict[str, Any], path: Path) -> str:
    name = data.get("name", path.stem)
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        raise UserError(
            f"{path}: name: must be letters, digits, '.', '_' or '-' (it names the results "
            f"directory), got {name!r}"
        )
    return name


def _dotted(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        if isinstance(v, dict) and v:
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _points(data: dict[str, Any], base: dict[str, Any]) -> list[Point]:
    points: list[Point] = []
    if "sweep" in data:
        points.extend(expand(base, parse_axes(data["sweep"])))
    if "experiments" in data:
        exps = data["experiments"]
        if not isinstance(exps, list) or not exps:
            raise UserError("experiments: must be a non-empty list of experiment mappings")
        for i, entry in enumerate(exps):
            if not isinstance(entry, dict):
                raise UserError(f"experiments[{i}]: must be a mapping of experiment settings")
            # shared sections configure only their own backend's experiments
            backend = entry.get("backend", base.get("backend", DEFAULT_BACKEND))
            shared = {k: v for k, v in base.items() if k not in BACKENDS or k == backend}
            points.append(
                Point(fields=deep_merge(shared, entry), swept=_dotted(entry), origin=f"experiments[{i}]")
            )
    if not points:
        points.append(Point(fields=dict(base), swept={}, origin="experiment"))
    return points


def _validate(points: list[Point], path: Path) -> list[tuple[Point, ExperimentConfig]]:
    good: list[tuple[Point, ExperimentConfig]] = []
    errors: dict[str, list[Point]] = {}
    for p in points:
        try:
            good.append((p, ExperimentConfig.model_validate(p.fields)))
        except ValidationError as e:
            for line in format_errors(e, ExperimentConfig):
                errors.setdefault(line, []).append(p)
    if not errors:
        return good
    lines = []
    for msg, bad in errors.items():
        if len(bad) == len(points) and len(points) > 1:
            lines.append(f"{msg} (in every experiment)")
        else:
            for p in bad:
                where = p.label if p.origin == "sweep" else p.origin
                lines.append(f"{msg} (from {where})" if p.swept or p.origin != "experiment" else msg)
    shown = lines[:MAX_ERRORS_SHOWN]
    more = f"\n  ... and {len(lines) - len(shown)} more" if len(lines) > len(shown) else ""
    raise UserError(f"{path}: invalid configuration:\n  " + "\n  ".join(shown) + more)


def load_study(path: Path, cycles: int | None = None) -> Study:
    """Read, expand and validate a study or experiment file. Raises UserError."""
    path = Path(path)
    data = read_yaml(path)
    _check_top_level(data, path)
    is_study = "sweep" in data or "experiments" in data
    name = _study_name(data, path)
    base = {k: v for k, v in data.items() if k not in STUDY_KEYS}

    exec_raw = data.get("execution") or {}
    if not isinstance(exec_raw, dict):
        raise UserError(f"{path}: execution: must be a mapping (n_cycles, order, ...)")
    if not is_study and "n_cycles" not in exec_raw:
        exec_raw = {**exec_raw, "n_cycles": 1}  # one experiment: one run unless asked
    if cycles is not None:
        exec_raw = {**exec_raw, "n_cycles": cycles}
    try:
        execution = Execution.model_validate(exec_raw)
    except ValidationError as e:
        raise UserError(
            f"{path}: invalid configuration:\n  "
            + "\n  ".join(format_errors(e, Execution, prefix="execution."))
        ) from None

    validated = _validate(_points(data, base), path)
    experiments: list[Experiment] = []
    seen: dict[str, Experiment] = {}
    notes = []
    for point, config in validated:
        h = config.config_hash()
        if h in seen:
            notes.append(f"{point.origin} ({point.label}) duplicates experiment {seen[h].index}; run once")
            continue
        exp = Experiment(len(experiments) + 1, config, point.swept, point.origin)
        seen[h] = exp
        experiments.append(exp)
    analysis = parse_analysis(data.get("analysis"), path)
    return Study(
        name=name,
        path=path,
        text=path.read_text(encoding="utf-8"),
        is_study=is_study,
        experiments=experiments,
        execution=execution,
        notes=notes,
        analysis=analysis,
        reference_index=resolve_reference(analysis.reference, experiments, path),
        lock=_lock_section(data.get("lock"), path),
        slurm=data.get("slurm"),
    )


def _lock_section(raw: Any, path: Path) -> dict[str, Any] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict) or "tool_commit" not in raw:
        raise UserError(f"{path}: lock: written by llem in study.lock.yaml files only; remove it "
                        "(to re-run a locked study use `llem reproduce DIR` or the lock file as it is)")
    return raw


def _flat_config(config: ExperimentConfig) -> dict[str, Any]:
    return _dotted(config.model_dump(mode="json"))


def resolve_reference(ref: int | str | dict[str, Any] | None, experiments: list[Experiment], path: Path) -> int:
    """The 1-based index of the reference experiment named by `analysis.reference`."""
    if ref is None:
        return 1
    if isinstance(ref, int):
        if 1 <= ref <= len(experiments):
            return ref
        raise UserError(f"{path}: analysis.reference: experiment {ref} does not exist; use 1 to {len(experiments)}")
    if isinstance(ref, str):
        hits = [e for e in experiments if ref in (e.label, e.id) or (len(ref) >= 6 and e.id.startswith(ref))]
        if len(hits) == 1:
            return hits[0].index
        labels = "; ".join(e.label for e in experiments[:MAX_ERRORS_SHOWN])
        raise UserError(f"{path}: analysis.reference: {ref!r} names no single experiment; "
                        f"use an index, an id, or one of the labels: {labels}")
    hits = [e for e in experiments
            if all(_flat_config(e.config).get(k, e.swept.get(k)) == v for k, v in ref.items())]
    if len(hits) == 1:
        return hits[0].index
    which = "no experiment" if not hits else f"{len(hits)} experiments ({', '.join(str(e.index) for e in hits)})"
    raise UserError(f"{path}: analysis.reference: {ref} matches {which}; give settings that pick exactly one")
