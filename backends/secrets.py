"""Secrets (HF_TOKEN, ...) reach runs through the environment only. Anything llem
writes from text it did not compose itself (exception messages, tracebacks, log
tails) goes through `redact` first, so a token echoed by a library can't land in a
manifest, error.json or report."""

from __future__ import annotations

import os

from llenergymeasure.backends.contract import SECRET_ENV_VARS

MIN_SECRET_LEN = 6  # shorter values would redact ordinary words


def secret_values() -> list[str]:
    return [v for k in SECRET_ENV_VARS if len(v := os.environ.get(k, "")) >= MIN_SECRET_LEN]


def redact(text: str) -> str:
    for value in secret_values():
        text = text.replace(value, "<redacted>")
    return text
