"""Exceptions that carry a message a user can act on.

The CLI turns a :class:`UserError` into one paragraph on stderr and exit code 2 (the
user can fix it); anything else is a failure of the run itself (exit code 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class UserError(Exception):
    """Something the user can fix: a config, an argument, a missing file."""

    exit_code = 2


class UnknownNameError(UserError, ValueError):
    """A name (quantizer, layer, ...) that the registry does not know."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name = kind, name
        super().__init__(f"unknown {kind} {name!r}{did_you_mean(name, known)}")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'ste_sign'?"`` for the closest known names, or ``""``."""
    known = list(known)
    by_lower = {k.lower(): k for k in known}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.6)
    if not close:
        return ""
    quoted = " or ".join(repr(by_lower[c]) for c in close)
    return f"; did you mean {quoted}?"
