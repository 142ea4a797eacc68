"""Prompt sets: `synthetic`, the fetched `aienergyscore` set, or any JSONL file.

Prompts are plain strings here; the adapter tokenises them (outside the measured
window) and truncates each to `max_input_tokens`.
"""

from __future__ import annotations

import hashlib
import json
import random
from functools import lru_cache
from pathlib import Path
from typing import Any

from llenergymeasure.backends.hashing import sha256_file
from llenergymeasure.backends.paths import data_dir, repo_data_dir

BUILTIN_DATASETS = ("synthetic", "aienergyscore")


class DatasetError(Exception):
    """The dataset can't be used as given; the message says how to fix it."""


@lru_cache(maxsize=None)
def builtin_spec(name: str) -> dict[str, Any]:
    return json.loads((repo_data_dir() / f"{name}.json").read_text())


def prompts_sha256(prompts: list[str]) -> str:
    h = hashlib.sha256()
    for p in prompts:
        h.update(json.dumps(p, ensure_ascii=False).encode("utf-8") + b"\n")
    return h.hexdigest()


def installed_path(name: str) -> Path:
    return data_dir() / builtin_spec(name)["installed_file"]


def dataset_path(dataset: str) -> Path | None:
    """The file a dataset reads from, or None for generated sets."""
    if dataset == "synthetic":
        return None
    if dataset in BUILTIN_DATASETS:
        path = installed_path(dataset)
        if not path.exists():
            raise DatasetError(
                f"dataset: '{dataset}' is not installed on this machine; fetch it once with "
                f"`llem datasets fetch {dataset}` (or `--from FILE` for a local copy)"
            )
        return path
    path = Path(dataset).expanduser()
    if not path.is_file():
        raise DatasetError(
            f"dataset: '{dataset}' is neither a built-in set ({', '.join(BUILTIN_DATASETS)}) "
            "nor an existing JSONL file"
        )
    return path.resolve()


def _bad_json(path: Path, lineno: int, e: json.JSONDecodeError) -> str:
    """json's whole message at the file's line and column: its `msg` alone is cut short
    ("Invalid control character at") and its own line number counts within one line."""
    where = f"line {lineno} column {e.colno}"
    hint = "; a tab or line break inside a string must be written \\t or \\n" \
        if e.msg.startswith("Invalid control character") else ""
    return (f"dataset: {path}:{lineno}: not valid JSON: {e.msg}"
            f"{' ' if e.msg.endswith(' at') else ' at '}{where}{hint}")


def read_jsonl_prompts(path: Path) -> list[str]:
    """Every `prompt` in a JSONL file, with the line number of any bad line."""
    prompts: list[str] = []
    try:
        f = open(path, "rb")
    except OSError as e:
        raise DatasetError(f"dataset: {path}: cannot be read ({e.strerror or e})") from None
    with f:
        for lineno, raw in enumerate(f, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise DatasetError(f"dataset: {path}:{lineno}: not UTF-8 text ({e.reason} at byte {e.start})") from None
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise DatasetError(_bad_json(path, lineno, e)) from None
            if not isinstance(obj, dict):
                raise DatasetError(f"dataset: {path}:{lineno}: expected a JSON object")
            if obj and all(k.startswith("_") for k in obj):
                continue  # metadata, e.g. a provenance record
            prompt = obj.get("prompt")
            if not isinstance(prompt, str) or not prompt.strip():
                raise DatasetError(
                    f"dataset: {path}:{lineno}: needs a non-empty string field 'prompt'"
                )
            prompts.append(prompt)
    if not prompts:
        raise DatasetError(f"dataset: {path} holds no prompts")
    return prompts


def synthetic_prompts(n: int, n_words: int, seed: int) -> list[str]:
    """Deterministic word sequences; each word is at least one token, so a prompt of
    `n_words` words truncates to exactly `max_input_tokens` when n_words exceeds it."""
    words = (repo_data_dir() / "synthetic" / "words.txt").read_text().split()
    rng = random.Random(seed)
    return [" ".join(rng.choice(words) for _ in range(n_words)) for _ in range(n)]


def load_prompts(dataset: str, n_prompts: int, max_input_tokens: int, seed: int,
                 sha256: str | None = None) -> list[str]:
    """The run's prompts. `sha256`: the dataset file's hash when the study was loaded (part
    of the config's identity), so a file edited since is refused, not measured under it."""
    path = dataset_path(dataset)
    if path is None:
        return synthetic_prompts(n_prompts, max_input_tokens + 8, seed)
    if sha256 is not None and sha256_file(path) != sha256:
        raise DatasetError(f"dataset: {path} changed after the study was loaded (its SHA-256 is no longer "
                           f"{sha256[:12]}...); start a new study to measure the new file")
    prompts = read_jsonl_prompts(path)
    if len(prompts) < n_prompts:
        raise DatasetError(
            f"n_prompts: {n_prompts} requested but dataset '{dataset}' has only "
            f"{len(prompts)} prompts; lower n_prompts"
        )
    return prompts[:n_prompts]
