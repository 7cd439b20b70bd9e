"""The type a layer's constructor expects of each argument, and located messages for a
value of the wrong type.

Keras answers a wrong type in Python's words (``'<=' not supported between instances of
'list' and 'int'``), naming no argument, or not at all (``use_bias: "no"`` is true). The
expected type is read where it is written down already, so that no hand list goes stale:
the argument's line in the Keras docstrings (``filters: Integer, ...``, ``kernel_size: An
integer or tuple/list of 2 integers``; bnn_cli's layers inherit their base class's), else
the type of its default in the signature (``use_bias=True``, ``momentum=0.99``).
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from bnn_cli.errors import error_text
from bnn_cli.registry import Entry

# What each expected type is called in messages.
DESCRIPTIONS = {"int": "an integer", "ints": "an integer or a list of integers",
                "number": "a number", "bool": "true or false", "str": "a string"}

_DOC_TYPES = [  # (pattern on the start of an argument's description, type), first match
    (r"(an? )?(python )?(positive |non-negative )?integer,? (or )?(tuple|list)", "ints"),
    (r"(an? )?(python )?(positive |non-negative )?integer\b", "int"),
    (r"(a )?(python )?(float|number)\b", "number"),
    (r"(a )?(python )?bool(ean)?\b|if true\b", "bool"),
]


def expected_type(cls: type, arg: str, default: Any) -> str | None:
    """``int``, ``ints`` (an integer or a list of them), ``number``, ``bool``, ``str``, or
    None where nothing says (an argument's docstring line first, then its default)."""
    described = _doc_type(cls, arg)
    if described:
        return described
    if isinstance(default, bool):
        return "bool"
    if isinstance(default, int):
        return "int"
    if isinstance(default, float):
        return "number"
    if isinstance(default, tuple) and default and all(_is_int(v) for v in default):
        return "ints"
    return "str" if isinstance(default, str) else None


def _doc_type(cls: type, arg: str) -> str | None:
    for klass in cls.__mro__:
        doc = inspect.getdoc(klass) if "__doc__" in vars(klass) else None
        match = re.search(rf"^\s*{re.escape(arg)}: (.+)$", doc or "", re.MULTILINE)
        if match:
            text = match.group(1).lower()
            return next((kind for pattern, kind in _DOC_TYPES if re.match(pattern, text)),
                        None)
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def matches(kind: str, value: Any) -> bool:
    """Whether ``value`` is of the expected ``kind`` (None, Keras's "not given", always is)."""
    if value is None:
        return True
    if kind == "ints":
        return _is_int(value) or (isinstance(value, list) and bool(value)
                                  and all(_is_int(v) for v in value))
    return {"int": _is_int(value), "bool": isinstance(value, bool), "str": isinstance(value, str),
            "number": isinstance(value, (int, float)) and not isinstance(value, bool)}[kind]


def mismatch(entry: Entry, arg: str, value: Any) -> str | None:
    """``expected an integer, got [64]``, or None where the value fits or nothing says."""
    default = next((p.default for p in entry.params if p.name == arg), None)
    kind = expected_type(entry.obj, arg, default) if isinstance(entry.obj, type) else None
    if kind is None or matches(kind, value):
        return None
    return f"expected {DESCRIPTIONS[kind]}, got {value!r}"


def plain_mismatch(entry: Entry, arg: str, value: Any) -> str | None:
    """A mismatch that Keras would not refuse itself, or only later in words that name
    no argument: a boolean that is not one (``"no"`` is true), a number given as a
    mapping, text or boolean. (A list where an integer belongs is left to
    :func:`construction_problem`, as some integer arguments take lists: ``axis``.)"""
    message = mismatch(entry, arg, value)
    if message is None or (isinstance(value, list) and not message.startswith(
            f"expected {DESCRIPTIONS['bool']}")):
        return None
    return message


def construction_problem(entry: Entry, args: dict[str, Any]) -> tuple[str | None, str] | None:
    """Construct the layer (cheap: no weights yet) to hear what Keras refuses, and name
    the argument it refused: the one whose value has not the expected type, else the one
    its message names. Returns (argument or None, message), or None if it constructs."""
    try:
        entry.obj(**args)
    except (TypeError, ValueError) as exc:
        for arg, value in args.items():
            if message := mismatch(entry, arg, value):
                return arg, message
        reason = error_text(exc)
        named = [a for a in args if re.search(rf"\b{re.escape(a)}\b", reason)]
        return (named[0] if named else None), reason
    return None
