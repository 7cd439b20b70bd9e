"""The component registry: every quantizer, layer, constraint ... that a name can refer to.

One registry serves every consumer: ``bnn_cli.quantizers.get``, the quantized layers,
Keras activation strings, the YAML model builder, ``bnn list-quantizers`` /
``bnn list-layers`` and the JSON schema all read it. This module does not import
TensorFlow; the modules that define components register them when imported.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from bnn_cli.errors import UnknownNameError, UserError

REQUIRED = inspect.Parameter.empty
"""Marks a parameter without a default."""

KINDS = ("quantizer", "layer", "constraint", "activation", "initializer", "regularizer",
         "optimizer", "schedule", "metric", "loss", "callback")


@dataclass(frozen=True)
class Param:
    """One constructor argument of a component."""

    name: str
    default: Any = REQUIRED

    @property
    def required(self) -> bool:
        return self.default is REQUIRED

    def as_dict(self) -> dict[str, Any]:
        if self.required:
            return {"name": self.name, "required": True}
        return {"name": self.name, "default": _jsonable(self.default)}


@dataclass(frozen=True)
class Entry:
    """What the registry knows of one component."""

    kind: str
    name: str
    obj: Any
    aliases: tuple[str, ...] = ()
    precision: int | None = None
    params: tuple[Param, ...] = ()
    summary: str = ""
    builtin: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "precision": self.precision,
            "parameters": [p.as_dict() for p in self.params],
            "summary": self.summary,
            "builtin": self.builtin,
            "module": getattr(self.obj, "__module__", None),
        }


class Registry:
    """Components by kind and by every name they answer to (name and aliases)."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._by_name: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._listeners: list[Callable[[Entry], None]] = []

    def add(self, entry: Entry, *, replace: bool = False) -> Entry:
        """Add an entry; a name already taken is an error unless ``replace=True``."""
        by_name = self._by_name[entry.kind]
        taken = [n for n in entry.names if n in by_name and by_name[n].obj is not entry.obj]
        if taken and not replace:
            raise UserError(
                f"{entry.kind} name {taken[0]!r} is already registered "
                f"(by {_describe(by_name[taken[0]].obj)}); pick another name or pass "
                "replace=True to replace it"
            )
        for name in taken:
            self._remove(by_name[name])
        self._entries[entry.kind][entry.name] = entry
        for name in entry.names:
            by_name[name] = entry
        for listener in self._listeners:
            listener(entry)
        return entry

    def _remove(self, entry: Entry) -> None:
        self._entries[entry.kind].pop(entry.name, None)
        for name in entry.names:
            if self._by_name[entry.kind].get(name) is entry:
                del self._by_name[entry.kind][name]

    def get(self, kind: str, name: str) -> Entry:
        """The entry for ``name`` (its name or an alias), or an error with suggestions."""
        try:
            return self._by_name[kind][name]
        except KeyError:
            raise UnknownNameError(kind, name, self.names(kind)) from None

    def find(self, kind: str, name: str) -> Entry | None:
        return self._by_name[kind].get(name)

    def find_obj(self, kind: str, obj: Any) -> Entry | None:
        """The entry registered for this exact object, if any."""
        return next((e for e in self._entries[kind].values() if e.obj is obj), None)

    def entries(self, kind: str) -> list[Entry]:
        return sorted(self._entries[kind].values(), key=lambda e: (not e.builtin, e.name))

    def names(self, kind: str) -> list[str]:
        return sorted(self._by_name[kind])

    def on_add(self, listener: Callable[[Entry], None]) -> None:
        """Call ``listener`` for every entry added from now on (and none before)."""
        self._listeners.append(listener)


REGISTRY = Registry()


def signature_params(obj: Any, *, skip: Iterable[str] = ()) -> tuple[Param, ...]:
    """The named parameters of a class's ``__init__`` or of a function.

    ``*args``/``**kwargs`` and the names in ``skip`` (``self``, a quantizer function's
    input ``x`` ...) are left out.
    """
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):
        return ()
    skip = {"self", *skip}
    return tuple(
        Param(p.name, p.default)
        for p in sig.parameters.values()
        if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )


def first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def _describe(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', repr(obj))}"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)
