"""Content-addressed cache of TensorRT-LLM engines (host side).

An engine is a function of the model's exact weights, the TensorRT-LLM
version, the GPU architecture and the build settings, and it takes minutes to
build. So it is built once per distinct set of those and kept:

    <root>/<key>/                      one published engine: the builder's files
    <root>/<key>/llem_engine.json      key, material, every file (path, size,
                                       sha256), build facts, created/last used
    <root>/.locks/<key>.lock           flock: exclusive to build or remove,
                                       shared while a run uses the engine
    <root>/.tmp-<key>-<pid>/           a build in progress (published by rename)
    <root>/.trash-<key>-<pid>-<ns>/    an entry being removed

`<root>` is `$LLEM_TRT_CACHE_DIR`, else `<llem cache>/trt-engines`. `<key>` is
the SHA-256 of the canonical JSON of the *key material* (`key_material`).

How keys are made is engine_keys.py.

Concurrency. `ensure_engine` looks under a shared lock, and builds under an
exclusive one: a second process asking for the same key waits, re-checks and
finds the finished engine. Publishing is one `os.rename`, so an entry is
either absent or complete. `use_engine` holds a shared lock for as long as a
run uses the engine; `prune` removes only entries whose lock it can take
exclusively without waiting, so it never removes an engine in use. Locks are
`fcntl.flock`: the cache must live on a local filesystem (not NFS) and be used
from one host; a container that reads a mounted engine takes no lock, the host
process that started it holds the shared lock for it.

Verification cost. Every use checks that the metadata parses and that every
listed file exists with its recorded size (a stat per file: cheap, catches
truncation, a deleted file or lost metadata). Full SHA-256 of every byte is
computed when an engine is published and on an explicit `verify(key)` or
`ensure_engine(..., verify=True)`; re-hashing multi-gigabyte engines before
every measured run would cost seconds to minutes of disk reads for nothing.
A damaged entry is removed and rebuilt.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from llenergymeasure.orchestrator.notify import Notify
from llenergymeasure.backends.atomic import write_json_atomic
from llenergymeasure.backends.clock import utc_now
from llenergymeasure.backends.hashing import sha256_file
from llenergymeasure.backends.tensorrt.config import TensorRTConfig
from llenergymeasure.backends.paths import cache_dir
from llenergymeasure.orchestrator.build.engine_keys import CACHE_FORMAT, engine_key, walk_files
from llenergymeasure.backends.processes import pid_alive
from llenergymeasure.orchestrator.errors import Failure, UserError

ENV_TRT_CACHE_DIR = "LLEM_TRT_CACHE_DIR"
METADATA = "llem_engine.json"
LOCKS = ".locks"

_KEY_RE = re.compile(r"^[0-9a-f]{64}$")
_TMP_RE = re.compile(r"^\.tmp-([0-9a-f]{64})-(\d+)$")
_TRASH_RE = re.compile(r"^\.trash-([0-9a-f]{64})-(\d+)-\d+$")

Builder = Callable[[Path], Mapping[str, Any] | None]


class EngineBuildFailed(Failure):
    """The builder failed or produced nothing usable."""


class EngineMissing(Failure):
    """The engine is not in the cache (never built, removed, or damaged)."""


# --------------------------------------------------------------------------- paths


def cache_root() -> Path:
    env = os.environ.get(ENV_TRT_CACHE_DIR)
    return Path(env).expanduser() if env else cache_dir() / "trt-engines"


def engine_dir(key: str) -> Path:
    return cache_root() / _checked_key(key)


def _lock_path(key: str) -> Path:
    return cache_root() / LOCKS / f"{key}.lock"


def _checked_key(key: str) -> str:
    if not _KEY_RE.match(key):
        raise UserError(f"'{key}' is not an engine key (64 lowercase hex digits)")
    return key


# --------------------------------------------------------------------------- entries


@dataclass
class EngineEntry:
    """One cache entry as its metadata describes it; `problem` is set if it is damaged."""

    key: str
    path: Path
    material: dict[str, Any] = field(default_factory=dict)
    files: list[dict[str, Any]] = field(default_factory=list)
    build: dict[str, Any] = field(default_factory=dict)
    created_at: str | None = None
    last_used_at: str | None = None
    problem: str | None = None
    in_use: bool | None = None  # filled by list_engines

    @property
    def model(self) -> str:
        return str(self.material.get("model", "?"))

    @property
    def size_bytes(self) -> int:
        if self.files:
            return sum(int(f.get("size", 0)) for f in self.files)
        return _du(self.path)

    @property
    def build_seconds(self) -> float | None:
        v = self.build.get("build_seconds")
        return float(v) if isinstance(v, (int, float)) else None

    @property
    def energy_j(self) -> float | None:
        v = self.build.get("energy_j")
        return float(v) if isinstance(v, (int, float)) else None

    @property
    def settings_summary(self) -> str:
        """Build settings that differ from the defaults, plus the GPU and version."""
        build = self.material.get("build") or {}
        defaults = TensorRTConfig().build_settings()
        changed = [f"{k}={v}" for k, v in sorted(build.items()) if defaults.get(k, object()) != v]
        gpu = self.material.get("gpu") or {}
        parts = [", ".join(changed) or "defaults",
                 f"trtllm {self.material.get('tensorrt_llm', '?')}",
                 f"sm {gpu.get('compute_capability')}"]
        return "; ".join(parts)

    @property
    def last_used(self) -> datetime:
        """For ordering: last use, else creation, else the directory's mtime."""
        for s in (self.last_used_at, self.created_at):
            if s:
                with contextlib.suppress(ValueError):
                    return datetime.fromisoformat(s)
        try:
            return datetime.fromtimestamp(self.path.stat().st_mtime, timezone.utc)
        except OSError:
            return datetime.fromtimestamp(0, timezone.utc)


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _du(path: Path) -> int:
    total = 0
    for dirpath, _, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _read_entry(path: Path, *, full: bool = False) -> EngineEntry:
    """The entry at `path`, with `problem` set if it is not a complete, intact engine."""
    key = path.name
    entry = EngineEntry(key=key, path=path)
    try:
        meta = json.loads((path / METADATA).read_text())
    except FileNotFoundError:
        entry.problem = f"no {METADATA} (half-written or damaged)"
        return entry
    except (OSError, ValueError) as e:
        entry.problem = f"unreadable {METADATA} ({e})"
        return entry
    if not isinstance(meta, dict):
        entry.problem = f"{METADATA} is not an object"
        return entry
    entry.material = meta.get("material") or {}
    entry.files = meta.get("files") or []
    entry.build = meta.get("build") or {}
    entry.created_at = meta.get("created_at")
    entry.last_used_at = meta.get("last_used_at")
    if meta.get("format") != CACHE_FORMAT:
        entry.problem = f"cache format {meta.get('format')!r}, expected {CACHE_FORMAT}"
    elif meta.get("key") != key or engine_key(entry.material) != key:
        entry.problem = "metadata does not match the entry's key"
    elif not entry.files:
        entry.problem = "metadata lists no engine files"
    else:
        entry.problem = _check_files(path, entry.files, full=full)
    return entry


def _check_files(root: Path, files: list[dict[str, Any]], *, full: bool) -> str | None:
    for f in files:
        rel = f.get("path")
        if not isinstance(rel, str) or rel.startswith("/") or ".." in Path(rel).parts:
            return f"bad file entry {rel!r}"
        p = root / rel
        try:
            st = os.lstat(p)
        except FileNotFoundError:
            return f"missing file {rel}"
        if st.st_size != f.get("size"):
            return f"{rel}: size {st.st_size}, expected {f.get('size')} (truncated or changed)"
        if full and sha256_file(p) != f.get("sha256"):
            return f"{rel}: checksum mismatch"
    return None


def _mark_used(entry: EngineEntry) -> None:
    """Record the use in the metadata (atomic replace); a read-only cache skips it."""
    path = entry.path / METADATA
    try:
        meta = json.loads(path.read_text())
        meta["last_used_at"] = entry.last_used_at = utc_now()
        write_json_atomic(path, meta)
    except (OSError, ValueError):
        pass


# --------------------------------------------------------------------------- locks


@contextlib.contextmanager
def _flock(key: str, mode: int, *, blocking: bool = True) -> Iterator[bool]:
    """Hold flock `mode` on the key's lock file; yields False if non-blocking and busy.

    The lock file may be unlinked by `prune` (while it holds it exclusively):
    after locking, the path must still name the inode we locked, else retry.
    """
    path = _lock_path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            got = True
            try:
                fcntl.flock(fd, mode | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                got = False
            if got:
                try:
                    same = os.stat(path).st_ino == os.fstat(fd).st_ino
                except FileNotFoundError:
                    same = False
                if not same:
                    continue  # unlinked (maybe re-created) while we waited: lock the current file
            yield got
            return
        finally:
            os.close(fd)  # releases the lock


# --------------------------------------------------------------------------- build


    return True


def clean_leftovers(*, owned_key: str | None = None) -> list[Path]:
    """Remove `.tmp-*` builds and `.trash-*` removals whose process is dead.

    For `owned_key` (whose exclusive lock the caller holds) every leftover of
    another process is stale, whatever its pid: pids get reused.
    """
    root = cache_root()
    removed: list[Path] = []
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return removed
    for name in names:
        m = _TMP_RE.match(name) or _TRASH_RE.match(name)
        if not m:
            continue
        key, pid = m.group(1), int(m.group(2))
        if pid == os.getpid() and key == owned_key and name.startswith(".tmp-"):
            continue  # ours, in progress
        if (key == owned_key and pid != os.getpid()) or not pid_alive(pid):
            shutil.rmtree(root / name, ignore_errors=True)
            removed.append(root / name)
    return removed


def _remove_entry_dir(path: Path) -> None:
    """Make the entry vanish atomically (rename), then delete it. Caller holds the lock EX."""
    trash = path.parent / f".trash-{path.name}-{os.getpid()}-{time.monotonic_ns()}"
    try:
        os.rename(path, trash)
    except FileNotFoundError:
        return
    shutil.rmtree(trash, ignore_errors=True)


def _make_readable(root: Path) -> None:
    # A container user (and the read-only mount) must be able to read it all.
    for dirpath, dirnames, filenames in os.walk(root):
        with contextlib.suppress(PermissionError):
            os.chmod(dirpath, 0o755)
        for name in filenames:
            with contextlib.suppress(PermissionError):
                os.chmod(os.path.join(dirpath, name), 0o644)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _build_and_publish(key: str, material: Mapping[str, Any], build: Builder) -> EngineEntry:
    root = cache_root()
    tmp = root / f".tmp-{key}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        t0 = time.monotonic()
        try:
            facts = dict(build(tmp) or {})
        except Failure:
            raise
        except Exception as e:  # noqa: BLE001 - any builder failure is a build failure
            raise EngineBuildFailed(f"engine build failed: {type(e).__name__}: {e}") from e
        elapsed = time.monotonic() - t0
        if not isinstance(facts.get("build_seconds"), (int, float)):
            facts["build_seconds"] = round(elapsed, 3)
        facts.setdefault("energy_j", None)
        facts["wall_seconds"] = round(elapsed, 3)  # as the cache saw it, container start included
        if (tmp / METADATA).exists():
            raise EngineBuildFailed(f"the builder wrote {METADATA}; that name is reserved for the cache")
        _make_readable(tmp)
        files = []
        for rel, p in walk_files(tmp, follow_links=False, error=EngineBuildFailed):
            files.append({"path": rel, "size": p.stat().st_size, "sha256": sha256_file(p)})
            _fsync(p)  # durable before the publishing rename
        if not files:
            raise EngineBuildFailed("the engine builder wrote no files")
        now = utc_now()
        write_json_atomic(tmp / METADATA, {
            "format": CACHE_FORMAT,
            "key": key,
            "material": dict(material),
            "files": files,
            "build": facts,
            "created_at": now,
            "last_used_at": now,
        })
        os.chmod(tmp, 0o755)
        dest = root / key
        _remove_entry_dir(dest)  # a damaged predecessor: we hold the lock exclusively
        os.rename(tmp, dest)  # atomic publish
        _fsync_dir(root)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    entry = _read_entry(dest)
    if entry.problem:  # pragma: no cover - would mean the filesystem lies
        raise EngineBuildFailed(f"published engine {key} is damaged: {entry.problem}")
    return entry


def ensure_engine(material: Mapping[str, Any], build: Builder, *, verify: bool = False) -> EngineEntry:
    """The engine for `material`, built with `build(tmp_dir) -> facts` if it is not cached.

    `build` writes the engine files into the directory it is given (nothing
    else) and returns facts to record (`build_seconds`, `energy_j`, anything
    JSON-able; `build_seconds` is measured if absent). A damaged entry is
    removed and rebuilt. `verify=True` checks every byte's checksum on a hit,
    not only sizes. Concurrent callers for one key get one build.

    Do not call this while this process holds `use_engine` on the same key and
    the entry may be damaged: the rebuild would wait for that lock forever.
    """
    key = engine_key(material)
    root = cache_root()
    root.mkdir(parents=True, exist_ok=True)
    dest = root / key
    with _flock(key, fcntl.LOCK_SH):
        entry = _read_entry(dest, full=verify)
        if entry.problem is None:
            _mark_used(entry)
            return entry
    with _flock(key, fcntl.LOCK_EX):
        clean_leftovers(owned_key=key)
        entry = _read_entry(dest, full=verify)  # another process may have built it meanwhile
        if entry.problem is None:
            _mark_used(entry)
            return entry
        return _build_and_publish(key, material, build)


def verify(key: str) -> EngineEntry:
    """Full check of one entry (every file's sha256); `problem` says what is wrong."""
    with _flock(_checked_key(key), fcntl.LOCK_SH):
        return _read_entry(cache_root() / key, full=True)


@contextlib.contextmanager
def use_engine(key: str) -> Iterator[EngineEntry]:
    """Hold the engine for a run: `prune` cannot remove it until the block exits.

    Raises EngineMissing if the entry is gone or damaged (checked under the lock).
    """
    with _flock(_checked_key(key), fcntl.LOCK_SH):
        entry = _read_entry(cache_root() / key)
        if entry.problem is not None:
            raise EngineMissing(f"TensorRT-LLM engine {key[:12]} is not usable: {entry.problem}")
        _mark_used(entry)
        yield entry


@contextlib.contextmanager
def engine_in_use(material: Mapping[str, Any], build: Builder, *, attempts: int = 3) -> Iterator[EngineEntry]:
    """`ensure_engine`, then hold it like `use_engine`; if a prune removed it in
    between (it was unlocked for a moment), build it again."""
    problem = None
    for _ in range(attempts):
        key = ensure_engine(material, build).key
        with _flock(key, fcntl.LOCK_SH):
            entry = _read_entry(cache_root() / key)
            if entry.problem is None:
                _mark_used(entry)
                yield entry
                return
            problem = entry.problem
    raise EngineMissing(f"TensorRT-LLM engine {engine_key(material)[:12]} vanished {attempts} times "
                        f"between build and use ({problem}); is something pruning the cache in a loop?")


# --------------------------------------------------------------------------- list, prune


def _entry_dirs() -> list[Path]:
    root = cache_root()
    try:
        return sorted(p for p in root.iterdir() if _KEY_RE.match(p.name) and p.is_dir())
    except FileNotFoundError:
        return []


def list_engines() -> list[EngineEntry]:
    """Every entry (damaged ones with `problem` set), most recently used first.

    Sizes are checked, checksums are not (see `verify`). `in_use` is whether a
    run holds it right now.
    """
    entries = []
    for path in _entry_dirs():
        entry = _read_entry(path)
        if not path.exists():
            continue  # removed while we looked
        with _flock(entry.key, fcntl.LOCK_EX, blocking=False) as got:
            entry.in_use = not got
        entries.append(entry)
    entries.sort(key=lambda e: e.last_used, reverse=True)
    return entries


def prune(older_than_days: float | None = None, max_total_gb: float | None = None, dry_run: bool = False,
          *, notify: Notify | None = None) -> list[EngineEntry]:
    """Remove damaged entries, entries unused for `older_than_days`, then the least
    recently used until the cache is at most `max_total_gb` (10^9 bytes).

    An entry a run holds (`use_engine`) or that is being built is never removed:
    it is skipped (`notify` says so) and still counts towards the size limit.
    Returns what was removed (or would be, with `dry_run`), in removal order.
    """
    if older_than_days is not None and older_than_days < 0:
        raise UserError("--older-than must be 0 or more days")
    if max_total_gb is not None and max_total_gb < 0:
        raise UserError("--max-size must be 0 or more GB")
    say = notify or (lambda _m: None)
    if not dry_run:
        clean_leftovers()
    entries = sorted((_read_entry(p) for p in _entry_dirs()), key=lambda e: e.last_used)  # oldest first
    cutoff = (datetime.now(timezone.utc) - timedelta(days=older_than_days)
              if older_than_days is not None else None)
    removed: list[EngineEntry] = []
    kept: list[EngineEntry] = []

    def try_remove(entry: EngineEntry, why: str, still: Callable[[EngineEntry], bool]) -> bool:
        with _flock(entry.key, fcntl.LOCK_EX, blocking=False) as got:
            if not got:
                say(f"{entry.key[:12]} {entry.model}: in use, kept ({why})")
                return False
            fresh = _read_entry(entry.path)  # rebuilt or used since we looked?
            if not entry.path.exists() or not still(fresh):
                return False
            entry = fresh
            if not dry_run:
                _remove_entry_dir(entry.path)
                with contextlib.suppress(FileNotFoundError):
                    _lock_path(entry.key).unlink()  # others re-check the inode after locking
        removed.append(entry)
        return True

    for entry in entries:
        if entry.problem is not None:
            done = try_remove(entry, f"damaged: {entry.problem}", lambda e: e.problem is not None)
        elif cutoff is not None and entry.last_used < cutoff:
            done = try_remove(entry, f"unused since {entry.last_used_at}",
                              lambda e: e.problem is not None or e.last_used < cutoff)
        else:
            done = False
        if not done:
            kept.append(entry)
    if max_total_gb is not None:
        limit = int(max_total_gb * 1e9)
        total = sum(e.size_bytes for e in kept)
        for entry in list(kept):  # oldest last-used first
            if total <= limit:
                break
            if try_remove(entry, f"cache over {max_total_gb:g} GB", lambda e: True):
                total -= removed[-1].size_bytes
    return removed
