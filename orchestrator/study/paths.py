"""Paths in a study file are relative to the study file's own directory.

A study file is run from anywhere (`llem run sub/study.yaml`, `cd sub && llem run
study.yaml`, a Slurm node), and every run process starts in its own run directory,
so a path read against "the working directory" names a different file in each of
those places. As docker compose does, llem reads a local model directory, a dataset
file and a LoRA adapter relative to the study file, once, when it loads the file,
and the experiment config records the absolute path; a dataset file's SHA-256 goes
into the config too, so two different prompt files at one path never share a
configuration hash. Built-in names (`llem/tiny-llama`, `synthetic`, `aienergyscore`)
and Hugging Face ids (`org/name`, when no such directory exists next to the study
file) are left as they are.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llenergymeasure.backends.hashing import sha256_file
from llenergymeasure.backends.models import BUILTIN_MODELS
from llenergymeasure.backends.prompts import BUILTIN_DATASETS
from llenergymeasure.orchestrator.errors import UserError

_PATH_PREFIXES = ("./", "../", "/", "~")
RULE = "a path in a study file is relative to the study file's directory"


def _usable(value: Any) -> bool:
    """A string worth treating as a path; anything else is left for validation to name."""
    return isinstance(value, str) and bool(value.strip()) and "\x00" not in value


def _is(kind: str, path: Path) -> bool:
    """`path.is_dir()` etc., False instead of an exception for names no filesystem accepts."""
    try:
        return getattr(path, kind)()
    except (OSError, ValueError):  # a name too long, a symlink loop...: not one
        return False


@dataclass
class PathResolver:
    """Resolves the paths of every expanded experiment against `base_dir`; each distinct
    value is looked up (and each dataset file hashed) once however many points share it."""

    base_dir: Path
    _models: dict[str, str] = field(default_factory=dict)
    _datasets: dict[str, tuple[str, str]] = field(default_factory=dict)

    def resolve(self, fields: dict[str, Any]) -> None:
        """Rewrite `fields` (one experiment, before validation) in place. Raises UserError."""
        if _usable(fields.get("model")) and fields["model"] not in BUILTIN_MODELS:
            fields["model"] = self._model(fields["model"])
        if _usable(fields.get("dataset")) and fields["dataset"] not in BUILTIN_DATASETS:
            self._dataset(fields)
        if _usable(fields.get("lora_adapter")):
            fields["lora_adapter"] = str(self._absolute("lora_adapter", fields["lora_adapter"]))

    def _absolute(self, key: str, value: str) -> Path:
        """`value` (`~` expanded) against the study file's directory, symlinks resolved."""
        try:
            return (self.base_dir / Path(value).expanduser()).resolve()
        except (OSError, RuntimeError, ValueError) as e:
            raise UserError(f"{key}: '{value}' is not a usable path ({e})") from None

    def _model(self, model: str) -> str:
        """A local directory becomes its absolute path; anything else is a Hugging Face id."""
        if model not in self._models:
            here = self._absolute("model", model)
            if model.startswith(_PATH_PREFIXES) or _is("is_dir", here):
                self._models[model] = str(here)  # a path, even one missing (preflight says so)
            elif _is("is_dir", Path(model)):
                rel = os.path.relpath(Path(model).resolve(), self.base_dir)
                raise UserError(f"model: '{model}' is a directory in the working directory but not next to "
                                f"the study file ({self.base_dir}); {RULE}: write model: {rel}")
            else:
                self._models[model] = model
        return self._models[model]

    def _dataset(self, fields: dict[str, Any]) -> None:
        """A dataset file: its absolute path, and its SHA-256 (checked against one given)."""
        dataset = fields["dataset"]
        if dataset not in self._datasets:
            file = self._absolute("dataset", dataset)
            if not _is("is_file", file):
                what = "is a directory" if _is("is_dir", file) else \
                    "is not a regular file" if _is("exists", file) else "does not exist"
                raise UserError(f"dataset: '{dataset}' is neither a built-in set ({', '.join(BUILTIN_DATASETS)}) "
                                f"nor a JSONL file: {file} {what} ({RULE})")
            try:
                self._datasets[dataset] = (str(file), sha256_file(file))
            except OSError as e:
                raise UserError(f"dataset: {file}: cannot be read ({e.strerror or e})") from None
        absolute, digest = self._datasets[dataset]
        given = fields.get("dataset_sha256")
        if isinstance(given, str) and given != digest:
            raise UserError(f"dataset_sha256: {absolute} has SHA-256 {digest}, not {given}; the file is not the "
                            "one this study was written for (or the hash is wrong)")
        fields["dataset"] = absolute
        if given is None or isinstance(given, str):  # anything else: validation names it
            fields["dataset_sha256"] = digest
