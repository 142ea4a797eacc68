"""Turning pydantic errors into one-line messages that name the key and the fix.

pydantic's own wording ("Input should be a valid integer") says neither what was
given nor what is allowed; a study author needs both, in YAML terms: "must be an
integer, not a boolean (got True)", "must be an integer from 0 to 4294967295".
"""

from __future__ import annotations

import difflib
import re
import reprlib
from typing import Any

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel, ValidationError
from pydantic.fields import FieldInfo
from pydantic_core import ErrorDetails

from llenergymeasure.backends.table import BACKENDS, TABLE

# what a strict type error expected, in YAML words
_EXPECTED = {"int_type": "an integer", "bool_type": "true or false", "string_type": "a string",
             "float_type": "a number", "dict_type": "a mapping", "model_type": "a mapping",
             "list_type": "a list"}
_BOUND_ERRORS = ("greater_than", "greater_than_equal", "less_than", "less_than_equal")

_repr = reprlib.Repr()
_repr.maxstring = _repr.maxother = _repr.maxlong = 80  # a value may be megabytes: never echo it whole
_repr.maxlevel = 3


def show(value: Any) -> str:
    """A value as a message quotes it: its repr, shortened (a huge value never floods the terminal)."""
    return _repr.repr(value)


def kind_of(value: Any) -> str:
    """What a YAML value is, in YAML words (a boolean, an integer, a string...)."""
    if isinstance(value, bool):
        return "a boolean"
    names = {int: "an integer", float: "a decimal number", str: "a string", list: "a list", dict: "a mapping"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def _model_at(model: type[BaseModel], parents: tuple[Any, ...]) -> type[BaseModel] | None:
    """The (section) model that `parents`, a path of field names, leads to."""
    current: Any = model
    for part in parents:
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return None
        ann = field.annotation
        candidates = [a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type)]
        current = next((c for c in candidates if issubclass(c, BaseModel)), None)
        if current is None:
            return None
    return current


def _fields_at(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names valid at the parent of `loc`, for 'did you mean' hints."""
    return list(getattr(_model_at(model, loc[:-1]), "model_fields", {}))


def _field(model: type[BaseModel], loc: tuple[Any, ...]) -> FieldInfo | None:
    """The field an error is about, for its allowed range (None for a dict key or a list item)."""
    parent = _model_at(model, loc[:-1]) if loc else None
    return parent.model_fields.get(loc[-1]) if parent is not None else None


def _allowed_range(field: FieldInfo) -> str:
    """'an integer from 1 to 1000000', 'a number greater than 0 and at most 1', ..."""
    attrs = {Ge: "ge", Gt: "gt", Le: "le", Lt: "lt"}
    b = {type(m): getattr(m, attrs[type(m)]) for m in field.metadata if type(m) in attrs}
    args = getattr(field.annotation, "__args__", (field.annotation,))
    what = "an integer" if int in args else "a number"
    if Ge in b and Le in b:
        return f"{what} from {b[Ge]} to {b[Le]}"
    low = f"at least {b[Ge]}" if Ge in b else f"greater than {b[Gt]}" if Gt in b else None
    high = f"at most {b[Le]}" if Le in b else f"less than {b[Lt]}" if Lt in b else None
    return f"{what} " + " and ".join(p for p in (low, high) if p)


def _problem(err: ErrorDetails, field: FieldInfo | None) -> str:
    """What is wrong with the value, as 'must be ...' wherever pydantic's words can be replaced."""
    kind, got = err["type"], err.get("input")
    if kind in _BOUND_ERRORS and field is not None:
        return f"must be {_allowed_range(field)}"
    if kind == "float_type" and isinstance(got, int) and not isinstance(got, bool):
        return "is too large a number" + (f"; it must be {_allowed_range(field)}" if field is not None else "")
    if kind in _EXPECTED:
        return f"must be {_EXPECTED[kind]}, not {kind_of(got)}"
    if kind == "string_pattern_mismatch" and str(err["loc"][-1]).endswith("sha256"):
        return "must be a SHA-256: 64 lowercase hexadecimal digits"
    if kind == "finite_number":
        return "must be a finite number (not .inf or .nan)"
    if kind == "literal_error":
        return f"must be {err['ctx']['expected']}"
    return str(err["msg"]).removeprefix("Value error, ")


def _other_backends_with(loc: tuple[Any, ...]) -> list[str]:
    """Backends whose section has this key, when it was given in another's section."""
    if len(loc) != 2 or loc[0] not in BACKENDS:
        return []
    return [r.name for r in TABLE if r.name != loc[0] and loc[1] in r.section.model_fields]


def _unknown_key(where: str, loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    """A misspelt key: the likely spelling, or the backend whose section it belongs in."""
    hint = ""
    close = difflib.get_close_matches(str(loc[-1]), _fields_at(model, loc), n=1)
    owners = _other_backends_with(loc)
    if owners:
        hint = f" for backend {loc[0]} (it is a setting of {' and '.join(owners)}; put it in that section)"
    elif close:
        hint = f" (did you mean '{close[0]}'?)"
    return f"{where}: unknown key{hint}; remove it or fix its spelling"


def format_errors(exc: ValidationError, model: type[BaseModel], prefix: str = "") -> list[str]:
    """One line per error: the dotted key (with `prefix`, e.g. 'execution.'), what is wrong, what was given."""
    lines = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        where = prefix + ".".join(str(p) for p in loc) if loc else prefix.rstrip(".")
        if err["type"] == "extra_forbidden":
            lines.append(_unknown_key(where, loc, model))
            continue
        msg = _problem(err, _field(model, loc))
        got = err.get("input")
        shown = "" if err["type"] == "missing" or isinstance(got, dict) or not loc else f" (got {show(got)})"
        if err["type"] == "string_type" and isinstance(got, (int, float)) and not isinstance(got, bool):
            shown += f"; write it in quotes: '{show(got)}'"  # YAML reads 1234567 or 1.10 as a number
        if where:
            lines.append(f"{where}: {msg}{shown}")
        else:  # a model-level check names its key itself ("lora_adapter: ..."); a bare one needs a place
            lines.append(msg if re.match(r"[\w.]+: ", msg) else f"config: {msg}")
    return lines
