"""Turning pydantic errors into one-line messages that name the key and the fix."""

from __future__ import annotations

import difflib
from typing import Any

from pydantic import BaseModel, ValidationError

from llenergymeasure.backends.table import BACKENDS, TABLE


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at the parent of `loc`, for 'did you mean' hints."""
    current: Any = model
    for part in loc[:-1]:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)]
        current = next((c for c in candidates if issubclass(c, BaseModel)), None)
        if current is None:
            return []
    return list(getattr(current, "model_fields", {}))


def _other_backends_with(loc: tuple[Any, ...]) -> list[str]:
    """Backends whose section has this key, when it was given in another's section."""
    if len(loc) != 2 or loc[0] not in BACKENDS:
        return []
    return [r.name for r in TABLE if r.name != loc[0] and loc[1] in r.section.model_fields]


def format_errors(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = prefix + ".".join(str(p) for p in loc) if loc else prefix.rstrip(".") or "config"
        if err["type"] == "extra_forbidden":
            hint = ""
            close = difflib.get_close_matches(str(loc[-1]), _fields_at(model, loc), n=1)
            owners = _other_backends_with(loc)
            if owners:
                hint = f" for backend {loc[0]} (it is a setting of {' and '.join(owners)}; put it in that section)"
            elif close:
                hint = f" (did you mean '{close[0]}'?)"
            lines.append(f"{where}: unknown key{hint}; remove it or fix its spelling")
            continue
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, "):]
        got = err.get("input")
        shown = "" if err["type"] == "missing" or isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"{where}: {msg}{shown}")
    return lines
