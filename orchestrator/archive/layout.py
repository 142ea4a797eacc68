"""Every path inside an archive, named once, and reading its index.

    <archive>/
      archive.json              the index (schema.ArchiveIndex): the one commit point
      studies/<study id>/       one folder per study: studies, runs, summary, environment .parquet
      .staging/                 an add in progress writes here first (removed when it ends)
      .lock                     flock'ed while an add, migration or push works on the archive

The default archive is `$LLEM_ARCHIVE`, else `$XDG_DATA_HOME/llenergymeasure/archive`
(`~/.local/share/llenergymeasure/archive`): the user's data, not a cache.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from llenergymeasure.orchestrator.archive.schema import FORMAT, SCHEMA_VERSION, TABLES, ArchiveIndex
from llenergymeasure.orchestrator.errors import UserError

ENV_ARCHIVE = "LLEM_ARCHIVE"
INDEX_FILE = "archive.json"
REMOTE_PREFIXES = ("hf://", "s3://", "gs://", "gcs://", "az://", "abfss://", "r2://", "http://", "https://")


def default_archive() -> Path:
    env = os.environ.get(ENV_ARCHIVE)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "llenergymeasure" / "archive"


def is_remote(path: str | Path) -> bool:
    return str(path).startswith(REMOTE_PREFIXES)


@dataclass(frozen=True)
class ArchiveLayout:
    root: Path

    @property
    def index(self) -> Path:
        return self.root / INDEX_FILE

    @property
    def studies(self) -> Path:
        return self.root / "studies"

    @property
    def staging(self) -> Path:
        return self.root / ".staging"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    def study_dir(self, rel: str) -> Path:
        return self.root / rel

    def table_file(self, rel_dir: str, table: str) -> Path:
        return self.root / rel_dir / f"{table}.parquet"


def table_file_name(table: str) -> str:
    assert table in TABLES, table
    return f"{table}.parquet"


def _raw_index(layout: ArchiveLayout) -> dict | None:
    """archive.json as JSON, or None when there is none; UserError when unreadable."""
    try:
        raw = json.loads(layout.index.read_bytes())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as e:
        raise UserError(f"{layout.index}: cannot be read ({type(e).__name__}: {e}); it is not an archive llem wrote") from None
    return checked_format(raw, str(layout.index))


def checked_format(raw: object, where: str) -> dict:
    """A parsed archive.json (local or remote), UserError unless it is an llem archive index."""
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise UserError(f"{where}: not an llem archive index (no \"format\": \"{FORMAT}\")")
    return raw


def schema_version_of(raw: dict, where: str) -> int:
    """An index's schema_version; UserError unless it is an integer (whether this llem reads
    it: version_problem)."""
    v = raw.get("schema_version")
    if not isinstance(v, int) or isinstance(v, bool):
        raise UserError(f"{where}: schema_version {v!r} is not an integer")
    return v


def version_problem(v: int, where: str, older_fix: str) -> str | None:
    """Why an archive of schema version `v` cannot be read by this llem, or None."""
    if v > SCHEMA_VERSION:
        return f"{where}: archive schema_version {v} is newer than this llem's ({SCHEMA_VERSION}); upgrade llem to read it"
    if v < SCHEMA_VERSION:
        return f"{where}: archive schema_version {v} is older than this llem's ({SCHEMA_VERSION}); {older_fix}"
    return None


def validated_index(raw: dict, where: str) -> ArchiveIndex:
    """The index model of a checked archive.json; UserError naming what is damaged."""
    try:
        return ArchiveIndex.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(map(str, err['loc']))}: {err['msg']}" for err in e.errors()[:3])
        raise UserError(f"{where}: a damaged archive index ({problems})") from None


def stored_version(layout: ArchiveLayout) -> int | None:
    """The archive's schema version: its index's, 0 for the unversioned layout
    (migrate.py), None for an empty or missing directory."""
    raw = _raw_index(layout)
    if raw is not None:
        return schema_version_of(raw, str(layout.index))
    return 0 if looks_like_v0(layout.root) else None


def looks_like_v0(root: Path) -> bool:
    """Version 0, the layout before the archive had a schema (migrate.py): no archive.json,
    a folder per study under studies/ holding that study directory's own runs.parquet
    and summary.parquet, copied as they were."""
    return (not (root / INDEX_FILE).exists() and (root / "studies").is_dir()
            and any((d / "runs.parquet").is_file() for d in (root / "studies").iterdir()))


def check_current(layout: ArchiveLayout) -> None:
    """UserError unless the archive has this llem's schema version (or is new)."""
    v = stored_version(layout)
    problem = None if v is None else version_problem(v, str(layout.root),
                                                     f"run `llem archive migrate --archive {layout.root}` first")
    if problem:
        raise UserError(problem)


def load_index(layout: ArchiveLayout) -> ArchiveIndex:
    """The index of a current archive (an empty one where there is none yet)."""
    check_current(layout)
    raw = _raw_index(layout)
    return ArchiveIndex() if raw is None else validated_index(raw, str(layout.index))


def local_root(path: str | Path | None, what: str) -> Path:
    """The archive directory `path` names (default: the user's); UserError for a remote one,
    which `what` (add, push, ...) cannot write."""
    if path is not None and is_remote(path):
        raise UserError(f"--archive {path}: a remote archive can be queried and listed but not {what}; "
                        "work on a local archive, then `llem archive push` it")
    return Path(path).expanduser() if path is not None else default_archive()


def existing_archive(path: str | Path | None) -> ArchiveLayout:
    """An archive that must already hold an index (list, query, push, site)."""
    root = local_root(path, "read this way")
    layout = ArchiveLayout(root)
    if not root.is_dir():
        raise UserError(f"{root}: no archive there; create one with `llem archive add STUDY_DIR --archive {root}`")
    check_current(layout)
    if not layout.index.is_file():
        raise UserError(f"{root}: not an llem archive (no {INDEX_FILE}); create one with "
                        f"`llem archive add STUDY_DIR --archive {root}`")
    return layout


@contextmanager
def locked(layout: ArchiveLayout) -> Iterator[None]:
    """Hold the archive's lock: one writer at a time (flock: released however the holder dies)."""
    layout.root.mkdir(parents=True, exist_ok=True)
    fd = os.open(layout.lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UserError(f"{layout.root}: another llem is writing to this archive; wait for it to finish") from None
        yield
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
