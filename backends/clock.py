"""The one wall-clock timestamp format of every file llem writes (manifest, results,
task records, engine metadata, reports): UTC ISO 8601 with milliseconds. One
precision everywhere, so timestamps from different writers sort and compare as text
(which runs overlapped is read from them)."""

from __future__ import annotations

from datetime import datetime, timezone


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")
