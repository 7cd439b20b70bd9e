"""Exceptions that carry a message a user can act on.

The CLI turns a :class:`UserError` into one paragraph on stderr and exit code 2 (the
user can fix it); anything else is a failure of the run itself (exit code 1).
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence


class UserError(Exception):
    """Something the user can fix: a config, an argument, a missing file."""

    exit_code = 2


class UnknownNameError(UserError, ValueError):
    """A name (quantizer, layer, ...) that the registry does not know."""

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        self.kind, self.name = kind, name
        super().__init__(f"unknown {kind} {name!r}{did_you_mean(name, known)}")


def did_you_mean(name: str, known: Iterable[str]) -> str:
    """``"; did you mean 'ste_sign'?"`` for the closest known name, or ``""``.

    One suggestion, the best: a list of near misses is harder to act on than one fix.
    """
    by_lower: dict[str, str] = {}
    for k in known:
        by_lower.setdefault(k.lower(), k)
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=1, cutoff=0.6)
    if not close and len(name) >= 3:  # an abbreviation: 'clip' for 'clip_value'
        close = sorted((k for k in by_lower if k.startswith(name.lower())), key=len)[:1]
    return f"; did you mean {by_lower[close[0]]!r}?" if close else ""


def listed(items: Sequence[str], limit: int = 5, sep: str = ", ") -> str:
    """The first ``limit`` items joined by ``sep``, and how many more there are: a long
    list of files in a message names a few and counts the rest."""
    more = f"{sep}and {len(items) - limit} more" if len(items) > limit else ""
    return sep.join(items[:limit]) + more


def error_text(exc: Exception) -> str:
    """The line of a Keras/TensorFlow error that says what is wrong (for messages).

    Keras wraps errors as 'Exception encountered when calling layer ...' with the call's
    arguments after the reason; TensorFlow's op errors end with the reason above a
    ``[[{{node NAME}}]]`` line, which names the layer.
    """
    text = getattr(exc, "message", None) or str(exc)
    lines = [ln.strip() for ln in text.split("Call arguments received")[0].splitlines()
             if ln.strip()]
    for i, line in enumerate(lines):
        node = re.search(r"\{\{node ([^}]+)\}\}", line)
        if line.startswith("[[") and i:
            return lines[i - 1][:300] + (f" (at {node.group(1)})" if node else "")
    if "in user code:" in lines:  # then a stack of 'File ...' lines; the reason is last
        return lines[-1][:300]
    useful = [ln for ln in lines if not ln.startswith("Exception encountered")]
    return (useful or lines or [type(exc).__name__])[0][:300]
