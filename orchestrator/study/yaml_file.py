"""Reading a study file: strict YAML (a key given twice is an error, not a silent
overwrite), a bounded read (a study file is small; `/dev/zero` or a multi-gigabyte
file given by mistake is refused at once instead of exhausting memory), and a clear
message for every way a file can be unreadable."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml

from llenergymeasure.orchestrator.errors import UserError
from llenergymeasure.orchestrator.study.size import MAX_FILE_BYTES

# libyaml's parser when present: a study near the size limit parses in a fraction of a
# second instead of several; the constructor (and the duplicate check) is the same Python
_BaseLoader: type = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _StrictLoader(_BaseLoader):  # type: ignore[misc, valid-type]
    """SafeLoader that refuses a key given twice in one mapping (PyYAML would keep
    the last silently, and the study would not be the one written)."""


def _no_duplicates(loader: Any, node: yaml.MappingNode, deep: bool = False) -> Any:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":
            continue
        key = loader.construct_object(key_node, deep=deep)
        try:
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    None, None, f"key '{key}' appears twice (first at line {seen[key]})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        except TypeError:  # unhashable: a list or mapping used as a key
            raise yaml.constructor.ConstructorError(
                None, None, "a mapping key must be a plain value", key_node.start_mark) from None
    return yaml.constructor.SafeConstructor.construct_mapping(loader, node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _no_duplicates)


def read_study_text(path: Path) -> str:
    """The file's text, read at most MAX_FILE_BYTES (+1, to notice more) whatever it is."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            data = f.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a study file") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror or e})") from None
    if len(data) > MAX_FILE_BYTES:
        what = f"is {size / (1 << 20):.1f} MiB" if size > MAX_FILE_BYTES else "is larger than 1 MiB"
        raise UserError(f"{path}: {what}; a study file may be at most {MAX_FILE_BYTES // (1 << 20)} MiB "
                        "(is it the right file?)")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: cannot read it: not UTF-8 text ({e.reason} at byte {e.start})") from None


MAX_DEPTH = 32  # a study nests a few levels; anything deeper is a mistake (or an attack)
MAX_VALUES = 2_000_000  # counted through aliases: a 1 MiB file holds far fewer on its own


def _size(node: Any, depth: int, sizes: dict[int, int], open_: set[int]) -> int:
    """How many values `node` holds once every alias is expanded (memoised by identity,
    so shared subtrees are counted without walking them twice)."""
    if not isinstance(node, (dict, list)):
        return 1
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_:
        raise ValueError("an alias refers to a mapping or list that contains it")
    if depth > MAX_DEPTH:
        raise ValueError(f"nested more than {MAX_DEPTH} levels deep")
    open_.add(id(node))
    children = [*node.keys(), *node.values()] if isinstance(node, dict) else node
    total = 1 + sum(_size(c, depth + 1, sizes, open_) if isinstance(c, (dict, list)) else 1 for c in children)
    open_.discard(id(node))
    sizes[id(node)] = total
    if total > MAX_VALUES:
        raise ValueError(f"expands (through YAML aliases) to more than {MAX_VALUES:,} values")
    return total


def parse_yaml(text: str, path: Path) -> dict[str, Any]:
    """A study file's text as a mapping; any YAML problem is a UserError naming its line."""
    if not text.strip():
        raise UserError(f"{path}: is empty; a study file needs at least `model:` (see studies/)")
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise UserError(f"{path}: not valid YAML{where}: {problem}") from None
    except RecursionError:
        raise UserError(f"{path}: not valid YAML: nested too deeply") from None
    except ValueError as e:  # e.g. an integer of more than 4,300 digits
        raise UserError(f"{path}: not valid YAML: {str(e)[:200]}") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: must be a YAML mapping of settings (found {type(data).__name__})")
    try:  # the rest of llem walks these values recursively and may copy them
        _size(data, 0, {}, set())
    except ValueError as e:
        raise UserError(f"{path}: not usable as a study file: {e}") from None
    return data


def read_yaml(path: Path) -> dict[str, Any]:
    """A study file as a mapping (bounded read, strict YAML); UserError for anything else."""
    return parse_yaml(read_study_text(path), path)
