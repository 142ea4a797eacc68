"""Sweep grammar: turn `sweep:` into experiment points (before any validation).

- `key: [a, b]` is an axis; axes are crossed as a Cartesian product.
- Dotted keys address nested fields (`measurement.warmup_batches`); a nested
  mapping is read the same way (`pytorch: {batch_size: [1, 2]}`).
- A key whose first segment is a backend (`pytorch.batch_size`) applies only to
  points of that backend.
- A list of mappings is a group of dependent settings whose entries are
  alternatives: `precision: [{pytorch.dtype: float16}, {pytorch.dtype: float32,
  pytorch.torch_compile: true}]`. Under a section name (`pytorch: [{...}]`) the
  entries' keys are relative to that section.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from llenergymeasure.backends.table import BACKENDS
from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.messages import show
from llenergymeasure.orchestrator.study.size import MAX_SWEEP_POINTS

SECTIONS = (*BACKENDS, "measurement", "gpu", "serving")  # a group under one of these names sets its fields
DEFAULT_BACKEND = "pytorch"


@dataclass
class Axis:
    key: str  # as written under sweep:, for messages
    alternatives: list[dict[str, Any]]  # each: dotted path from the root -> value


@dataclass
class Point:
    """One expanded experiment before validation, and how it came about."""

    fields: dict[str, Any]
    swept: dict[str, Any] = field(default_factory=dict)  # dotted key -> value
    origin: str = "sweep"

    @property
    def label(self) -> str:
        return ", ".join(f"{k}={show_value(v)}" for k, v in self.swept.items()) or "(base)"


def show_value(v: Any) -> str:
    """YAML spelling of a value in labels: true/false, not True/False."""
    return str(v).lower() if isinstance(v, bool) else str(v)


def _flatten(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in mapping.items():
        path = f"{prefix}{k}"
        if isinstance(v, dict):
            if not v:
                raise UserError(f"sweep.{path}: is an empty mapping; remove it")
            out.update(_flatten(v, path + "."))
        else:
            out[path] = v
    return out


def parse_axes(sweep: Any) -> list[Axis]:
    if not isinstance(sweep, dict) or not sweep:
        raise UserError("sweep: must be a mapping of keys to lists of values, e.g. "
                        "sweep: {pytorch.batch_size: [1, 2, 4]}")
    axes = []
    for key, values in _flatten(sweep).items():
        if not isinstance(values, list):
            raise UserError(
                f"sweep.{key}: must be a list of values (got {show(values)}); write "
                f"`{key}: [{show(values)}]`, or set it outside sweep: as a fixed field"
            )
        if not values:
            raise UserError(f"sweep.{key}: is an empty list; give at least one value or remove it")
        n_maps = sum(isinstance(v, dict) for v in values)
        if n_maps and n_maps != len(values):
            raise UserError(
                f"sweep.{key}: mixes mappings and plain values; a group is a list of mappings, "
                "an axis a list of values"
            )
        if n_maps:
            prefix = f"{key}." if key in SECTIONS else ""
            alts = []
            for i, entry in enumerate(values):
                if not entry:
                    raise UserError(f"sweep.{key}[{i}]: is an empty mapping; remove it")
                alts.append({prefix + k: v for k, v in _flatten(entry).items()})
            axes.append(Axis(key, alts))
        else:
            if len(set(map(repr, values))) != len(values):
                raise UserError(f"sweep.{key}: lists a value twice; list each value once")
            axes.append(Axis(key, [{key: v} for v in values]))
    return axes


def _scope(path: str) -> str | None:
    head = path.split(".", 1)[0]
    return head if head in BACKENDS and "." in path else None


def _applies(alt: dict[str, Any], backend: str) -> bool:
    return all(_scope(p) in (None, backend) for p in alt)


def set_dotted(target: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = target
    for i, part in enumerate(parts[:-1]):
        nxt = node.setdefault(part, {})
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise UserError(
                f"sweep: '{path}' goes through '{'.'.join(parts[: i + 1])}', which is not a section"
            )
        node = nxt
    node[parts[-1]] = value


def _ordered(axes: list[Axis]) -> list[Axis]:
    """Axes that set `backend` first, so that backend-scoped axes apply only to their points."""
    return sorted(axes, key=lambda a: 0 if any("backend" in alt for alt in a.alternatives) else 1)


def count_points(base: dict[str, Any], axes: list[Axis]) -> int:
    """How many points `expand` makes, without making them. Only a point's backend decides
    which axes apply to it, so points are counted per backend: a product of any size is
    counted in a few steps, and refused before a single point exists."""
    start = base.get("backend", DEFAULT_BACKEND)
    counts: dict[str, tuple[Any, int]] = {repr(start): (start, 1)}
    for axis in _ordered(axes):
        grown: dict[str, tuple[Any, int]] = {}
        for backend, n in counts.values():
            alts = [a for a in axis.alternatives if _applies(a, str(backend))] or [{}]  # {}: not this backend's
            for alt in alts:
                b = alt.get("backend", backend)
                grown[repr(b)] = (b, grown.get(repr(b), (b, 0))[1] + n)
        counts = grown
    return sum(n for _, n in counts.values())


def check_sweep_size(base: dict[str, Any], axes: list[Axis]) -> int:
    """The number of sweep points; UserError above MAX_SWEEP_POINTS."""
    n = count_points(base, axes)
    if n > MAX_SWEEP_POINTS:
        sizes = " x ".join(f"{a.key}: {len(a.alternatives)}" for a in axes[:8]) + (" x ..." if len(axes) > 8 else "")
        raise UserError(f"sweep: expands to {n:,} experiments ({sizes}); the limit is "
                        f"{MAX_SWEEP_POINTS:,}. Narrow the sweep or split it into several studies")
    return n


def expand(base: dict[str, Any], axes: list[Axis]) -> list[Point]:
    """Cross the axes. Axes that set `backend` go first, so that backend-scoped
    axes can be applied only to the points they belong to."""
    check_sweep_size(base, axes)
    ordered = _ordered(axes)
    points = [Point(fields={}, swept={})]
    used = {a.key: False for a in axes}
    for axis in ordered:
        grown = []
        for p in points:
            backend = p.fields.get("backend", base.get("backend", DEFAULT_BACKEND))
            alts = [a for a in axis.alternatives if _applies(a, str(backend))]
            if not alts:
                grown.append(p)  # the axis belongs to another backend
                continue
            used[axis.key] = True
            for alt in alts:
                q = Point(fields=dict(p.fields), swept=dict(p.swept))
                for path, value in alt.items():
                    q.fields[path] = value
                    q.swept[path] = value
                grown.append(q)
        points = grown
    for key, was_used in used.items():
        if not was_used:
            raise UserError(
                f"sweep.{key}: applies to a backend that no experiment uses; add that "
                "backend (e.g. to sweep.backend) or remove the key"
            )
    return [materialise(base, p.fields, p.swept, "sweep") for p in points]


def materialise(
    base: dict[str, Any], assignments: dict[str, Any], swept: dict[str, Any], origin: str
) -> Point:
    """Base fields with the point's assignments applied; shared sections of
    other backends are dropped (they configure those backends' points only)."""
    fields = copy.deepcopy(base)
    for path, value in assignments.items():
        set_dotted(fields, path, value)
    backend = fields.get("backend", DEFAULT_BACKEND)
    for name in BACKENDS:
        if name != backend and name in base and name not in _touched_sections(assignments):
            fields.pop(name, None)
    return Point(fields=fields, swept=swept, origin=origin)


def _touched_sections(assignments: dict[str, Any]) -> set[str]:
    return {p.split(".", 1)[0] for p in assignments}


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out
