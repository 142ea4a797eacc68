"""Errors a user caused and can fix. The CLI prints the message and exits 2."""

from __future__ import annotations


class UserError(Exception):
    """Bad input: the message names the field or key and says how to fix it."""

    exit_code = 2


class Failure(Exception):
    """Something outside the user's input failed (a download, an image build):
    exit 1 with the message, no traceback."""

    exit_code = 1
