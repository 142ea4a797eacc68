"""Errors a user caused and can fix. The CLI prints the message and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the field or key and says how to fix it."""

    exit_code = 2


class StudyFailed(Exception):
    """The study ran but at least one run failed (exit code 1)."""

    exit_code = 1
