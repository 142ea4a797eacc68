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
from llenergymeasure.orchestrator.study.messages import format_errors, show
from llenergymeasure.orchestrator.study.paths import PathResolver
from llenergymeasure.orchestrator.study.size import check_run_count
from llenergymeasure.orchestrator.study.slurm_section import check_slurm_section
from llenergymeasure.orchestrator.study.spec import Execution, Experiment, Study
from llenergymeasure.orchestrator.study.sweep import (
    DEFAULT_BACKEND, Point, check_sweep_size, deep_merge, expand, parse_axes,
)
from llenergymeasure.orchestrator.study.yaml_file import parse_yaml, read_study_text

STUDY_KEYS = ("name", "sweep", "experiments", "execution", "analysis", "lock", "slurm")
MAX_ERRORS_SHOWN = 10
_UNSET = object()


def _check_top_level(data: dict[str, Any], path: Path) -> None:
    known = [*ExperimentConfig.model_fields, *STUDY_KEYS]
    for key in data:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise UserError(f"{path}: {str(key)[:80]}: unknown key{hint}; remove it or fix its spelling")


def _study_name(data: dict[str, Any], path: Path) -> str:
    """The `name:` key, else the file's name; either must be usable as a directory name."""
    name = data.get("name", path.stem)
    if isinstance(name, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", name):
        return name
    if "name" not in data:  # the author never wrote a name: say where this one came from
        fixed = re.sub(r"[^A-Za-z0-9._-]+", "-", path.stem).strip("-._")[:64].strip("-._") or "my-study"
        raise UserError(
            f"{path}: the study's name comes from its file name {path.stem!r} when it has no name: key, and it "
            f"names the results directory; add `name: {fixed}` (letters, digits, '.', '_', '-') or rename the file"
        )
    raise UserError(
        f"{path}: name: must be letters, digits, '.', '_' or '-' (it names the results "
        f"directory), got {show(name)}"
    )


def _dotted(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        if isinstance(v, dict) and v:
            out.update(_dotted(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def _experiment_entries(data: dict[str, Any]) -> list[dict[str, Any]]:
    """The `experiments:` list, its shape checked, so it can be counted before it is expanded."""
    if "experiments" not in data:
        return []
    exps = data["experiments"]
    if not isinstance(exps, list) or not exps:
        raise UserError("experiments: must be a non-empty list of experiment mappings")
    for i, entry in enumerate(exps):
        if not isinstance(entry, dict):
            raise UserError(f"experiments[{i}]: must be a mapping of experiment settings")
    return exps


def _points(data: dict[str, Any], base: dict[str, Any], n_cycles: int, path: Path) -> list[Point]:
    """Every experiment before validation: counted first, and refused above the limits
    (size.py) before a single point is built."""
    axes = parse_axes(data["sweep"]) if "sweep" in data else []
    n_sweep = check_sweep_size(base, axes) if axes else 0
    exps = _experiment_entries(data)
    check_run_count(n_sweep + len(exps) or 1, n_cycles, path)
    points: list[Point] = expand(base, axes) if axes else []
    for i, entry in enumerate(exps):
        # shared sections configure only their own backend's experiments
        backend = entry.get("backend", base.get("backend", DEFAULT_BACKEND))
        shared = {k: v for k, v in base.items() if k not in BACKENDS or k == backend}
        points.append(Point(fields=deep_merge(shared, entry), swept=_dotted(entry), origin=f"experiments[{i}]"))
    if not points:
        points.append(Point(fields=dict(base), swept={}, origin="experiment"))
    return points


def _validate(points: list[Point], path: Path, paths: PathResolver) -> list[tuple[Point, ExperimentConfig]]:
    """Every point's paths resolved (paths.py), then validated; all problems reported together."""
    good: list[tuple[Point, ExperimentConfig]] = []
    errors: dict[str, list[Point]] = {}
    for p in points:
        try:
            paths.resolve(p.fields)
            good.append((p, ExperimentConfig.model_validate(p.fields)))
        except UserError as e:
            errors.setdefault(str(e), []).append(p)
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


def _execution(data: dict[str, Any], path: Path, is_study: bool, cycles: int | None) -> Execution:
    """The `execution:` section (with --cycles): validated first, since n_cycles sizes the plan."""
    exec_raw = data.get("execution") or {}
    if not isinstance(exec_raw, dict):
        raise UserError(f"{path}: execution: must be a mapping (n_cycles, order, ...)")
    if not is_study and "n_cycles" not in exec_raw:
        exec_raw = {**exec_raw, "n_cycles": 1}  # one experiment: one run unless asked
    if cycles is not None:  # --cycles N replaces n_cycles: auto too, and with it auto's own settings
        exec_raw = {k: v for k, v in exec_raw.items() if k not in ("target_ci_pct", "max_cycles")}
        exec_raw["n_cycles"] = cycles
    try:
        return Execution.model_validate(exec_raw)
    except ValidationError as e:
        raise UserError(
            f"{path}: invalid configuration:\n  "
            + "\n  ".join(format_errors(e, Execution, prefix="execution."))
        ) from None


def _unique(validated: list[tuple[Point, ExperimentConfig]]) -> tuple[list[Experiment], list[str]]:
    """One experiment per distinct configuration, in order; a note for each duplicate."""
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
    return experiments, notes


def load_study(path: Path, cycles: int | None = None, base_dir: Path | None = None) -> Study:
    """Read, expand and validate a study or experiment file. Raises UserError.

    Every section the file has is checked, whatever will run it (a bad `slurm:` is
    an error with the local runner too), and sizes are checked before anything is
    expanded. Relative paths in the file are read from `base_dir`, by default the
    file's own directory (paths.py); a copy of a study file elsewhere (a study
    directory's) needs the original's directory to mean the same files.
    """
    path = Path(path)
    text = read_study_text(path)
    data = parse_yaml(text, path)
    _check_top_level(data, path)
    is_study = "sweep" in data or "experiments" in data
    name = _study_name(data, path)
    base = {k: v for k, v in data.items() if k not in STUDY_KEYS}
    execution = _execution(data, path, is_study, cycles)
    slurm = check_slurm_section(data.get("slurm"), path)
    analysis = parse_analysis(data.get("analysis"), path)
    lock = _lock_section(data.get("lock"), path)
    points = _points(data, base, execution.most_cycles, path)  # n_cycles: auto: sized for max_cycles
    base_dir = Path(base_dir).absolute() if base_dir else path.absolute().parent
    resolver = PathResolver(base_dir)
    experiments, notes = _unique(_validate(points, path, resolver))
    return Study(
        name=name,
        path=path,
        text=text,
        is_study=is_study,
        experiments=experiments,
        execution=execution,
        notes=notes,
        analysis=analysis,
        reference_index=resolve_reference(analysis.reference, experiments, path),
        lock=lock,
        slurm=slurm,
        base_dir=base_dir,
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
        raise UserError(f"{path}: analysis.reference: {show(ref)} names no single experiment; "
                        f"use an index, an id, or one of the labels: {labels}")
    # a value as written (a swept `dataset: prompts.jsonl`) or as configured (its absolute path)
    hits = [e for e in experiments
            if all(v in (e.swept.get(k, _UNSET), _flat_config(e.config).get(k, _UNSET)) for k, v in ref.items())]
    if len(hits) == 1:
        return hits[0].index
    which = "no experiment" if not hits else f"{len(hits)} experiments ({', '.join(str(e.index) for e in hits)})"
    raise UserError(f"{path}: analysis.reference: {show(ref)} matches {which}; give settings that pick exactly one")
