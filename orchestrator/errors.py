"""Errors a user caused and can fix. The CLI prints the message and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the field or key and says how to fix it."""

    exit_code = 2


class NothingStarted(UserError):
    """Bad input found only once the study directory existed (e.g. sbatch refused the
    array): no run started, so a new study directory is removed again."""


class Failure(Exception):
    """Something outside the user's input failed (a download, an image build):
    exit 1 with the message, no traceback."""

    exit_code = 1
