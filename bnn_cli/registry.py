"""The component registry: every quantizer, layer, constraint ... that a name can refer to.

:func:`register` is the one way in, for bnn_cli's built-ins and for users' own
components alike (``register_quantizer``, ``register_layer`` and ``register_activation``
are thin, Larq-compatible spellings of it). It records the component here, where
``bnn_cli.quantizers.get``, the YAML model spec, ``bnn list-*`` and the JSON schema look
names up, and makes it known to Keras, so saved models that use it load again:

- under ``bnn_cli>Name`` (Keras's registered name), always;
- under its plain names (``SteSign``, ``weight_clip``), only where no other library
  has taken them: Larq registers the same plain names, and its string lookups must keep
  building Larq's objects whichever library was imported first. bnn_cli never reads
  those global plain names itself: its lookups go through this registry, and its
  loaders see bnn_cli's names in a scope of their own (:func:`keras_scope`);
- quantizer and activation names used as Keras activations (``Activation("ste_sign")``)
  are a :class:`NamedActivation`: Keras hands the object in its table back as it is,
  so it must be callable. Where a class held the name (Larq's quantizer classes, which
  Keras would then call on a tensor as a constructor), the activation takes the name and
  keeps building that class for those who build from it (``from_config``), as Larq does.

This module does not import TensorFlow; Keras is reached only when something registers.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import importlib
import inspect
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from bnn_cli.errors import UnknownNameError, UserError

PACKAGE = "bnn_cli"
"""The package part of the Keras registered names of bnn_cli's components."""

REQUIRED = inspect.Parameter.empty
"""Marks a parameter without a default."""

KINDS = ("quantizer", "layer", "constraint", "activation", "initializer", "regularizer",
         "optimizer", "schedule", "metric", "callback")

_BUILTIN_MODULES = ("quantizers", "layers", "constraints", "activations", "metrics",
                    "optimizers", "callbacks", "schedules", "zoo")

# Names that earlier releases wrote into saved models for what is now NamedActivation.
_FORMER_ACTIVATION_CLASSES = ("QuantizerActivation", "SerializableActivation")


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

    @property
    def names(self) -> tuple[str, ...]:
        return (self.name, *self.aliases)

    @property
    def builtin(self) -> bool:
        """Defined by bnn_cli or Keras (not by a user's plugin)."""
        return _module_of(self.obj).split(".")[0] in (PACKAGE, "tf_keras", "keras")

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "aliases": list(self.aliases),
            "precision": self.precision,
            "parameters": [p.as_dict() for p in self.params],
            "summary": self.summary,
            "builtin": self.builtin,
            "module": _module_of(self.obj),
        }


class Registry:
    """Components by kind and by every name they answer to (name and aliases)."""

    def __init__(self) -> None:
        self._entries: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        self._by_name: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}

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


REGISTRY = Registry()


def register(kind: str, obj: Any = None, *, name: str | None = None,
             aliases: Iterable[str] = (), precision: int | None = None,
             params: tuple[Param, ...] | None = None, summary: str | None = None,
             replace: bool = False) -> Any:
    """Register a component so that configs, lookups and saved models can name it.

    Works as ``register("quantizer", MySign)`` or as a decorator,
    ``@register("quantizer", name="my_sign")``. ``name`` defaults to the object's
    ``__name__``; ``params`` to its signature (a function's first argument, the input,
    left out); ``summary`` to the first line of its docstring. A name already taken is
    an error unless ``replace=True``. Returns the object unchanged.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown component kind {kind!r}; kinds: {', '.join(KINDS)}")

    def decorator(target: Any) -> Any:
        entry = Entry(
            kind=kind,
            name=name or target.__name__,
            obj=target,
            aliases=tuple(aliases),
            precision=precision,
            params=params if params is not None else signature_params(target),
            summary=summary if summary is not None else first_doc_line(target),
        )
        REGISTRY.add(entry, replace=replace)
        _expose_to_keras(entry)
        return target

    return decorator if obj is None else decorator(obj)


def load_builtins() -> None:
    """Import every module that registers built-in components."""
    for module in _BUILTIN_MODULES:
        importlib.import_module(f"{PACKAGE}.{module}")


# ---------------------------------------------------------------------------------------
# Activations by name
# ---------------------------------------------------------------------------------------


class NamedActivation:
    """A registered activation or quantizer, used as a Keras activation by name.

    ``Dense(10, activation="ste_sign")``, ``Activation("hard_tanh")`` and the public
    ``bnn_cli.activations.hard_tanh`` are instances. Calling one calls the component
    with the stored keyword arguments: an activation function, a quantizer function, or
    a default quantizer's ``quantize`` (the values of the quantizer layer, without
    creating a sub-layer inside the caller's ``call``).

    It is an object with ``get_config`` (``{"name": NAME, **kwargs}``) rather than a
    function because tf-keras writes custom functions in a form its own HDF5 loader
    cannot read; a registered object round-trips through ``.keras`` and ``.h5``.
    """

    def __init__(self, name: str, **kwargs: Any):
        self.name = self.__name__ = name
        self.kwargs = kwargs
        target = self._entry().obj
        _check_kwargs(target, kwargs)
        # Keras's legacy loader and Larq build an object from the one in Keras's table
        # with `table[name].from_config(config)`; on an instance that builds this one.
        self.from_config = self._with_config

    def _entry(self) -> Entry:
        entry = REGISTRY.find("activation", self.name) or REGISTRY.find("quantizer", self.name)
        if entry is None:
            raise UnknownNameError("activation", self.name,
                                   REGISTRY.names("activation") + REGISTRY.names("quantizer"))
        return entry

    @functools.cached_property
    def _fn(self) -> Callable[[Any], Any]:
        target = self._entry().obj
        if inspect.isclass(target):  # a quantizer layer written the Larq way has no quantize
            instance = target(**self.kwargs)
            return getattr(instance, "quantize", instance)
        return functools.partial(target, **self.kwargs)

    @property
    def precision(self) -> int | None:
        """The quantizer's precision (bits), read by summaries, Bop and Larq's layers."""
        return self._entry().precision

    def __call__(self, x: Any, **kwargs: Any) -> Any:
        return self.with_args(**kwargs)(x) if kwargs else self._fn(x)

    def with_args(self, **kwargs: Any) -> NamedActivation:
        """The same activation with other arguments, e.g. ``alpha=0.1``."""
        return NamedActivation(self.name, **{**self.kwargs, **kwargs})

    def _with_config(self, config: dict[str, Any]) -> NamedActivation:
        return self.with_args(**{k: v for k, v in config.items() if k != "name"})

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, **self.kwargs}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> NamedActivation:
        return cls(**config)

    def __deepcopy__(self, memo: dict) -> NamedActivation:
        # Not the cached function: it may hold a quantizer layer, which is no config.
        return NamedActivation(self.name, **copy.deepcopy(self.kwargs, memo))

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"NamedActivation({self.name!r}{args})"


def _check_kwargs(target: Any, kwargs: dict[str, Any]) -> None:
    """Unknown arguments fail here rather than at the first call inside a model."""
    known = [p.name for p in signature_params(target)]
    unknown = sorted(set(kwargs) - set(known))
    if unknown:
        raise ValueError(f"{getattr(target, '__name__', target)!r} takes argument(s) "
                         f"{known}, got {unknown}")


# ---------------------------------------------------------------------------------------
# Keras's tables
# ---------------------------------------------------------------------------------------

_objects: dict[str, Any] = {}  # plain name -> bnn_cli's object for it
_ours: dict[str, Any] = {}  # plain name -> what bnn_cli put under it in Keras's table


def _activation_names(entry: Entry) -> tuple[str, ...]:
    if entry.kind == "activation":
        return entry.names
    if entry.kind == "quantizer":  # a class's own name stays the class
        return entry.aliases if inspect.isclass(entry.obj) else entry.names
    return ()


def _plain_objects(entry: Entry) -> dict[str, Any]:
    """What Keras should find under each plain name of an entry."""
    activations = _activation_names(entry)
    objects = {n: NamedActivation(n) for n in activations}
    if inspect.isclass(entry.obj):
        objects.update({n: entry.obj for n in entry.names if n not in activations})
    return objects


def _is_keras_own(obj: Any) -> bool:
    return _module_of(obj).split(".")[0] in ("tf_keras", "keras")


def _expose_to_keras(entry: Entry) -> None:
    if _is_keras_own(entry.obj):
        return  # Keras's own layers: Keras knows them
    from bnn_cli._keras import keras  # (lazy: only registering needs Keras)

    _expose_activation_class()
    table = keras.utils.get_custom_objects()
    if inspect.isclass(entry.obj) and hasattr(entry.obj, "get_config"):  # (callbacks: no)
        keras.saving.register_keras_serializable(PACKAGE, entry.name)(entry.obj)
        for alias in entry.aliases:
            table[f"{PACKAGE}>{alias}"] = entry.obj
    for name, obj in _plain_objects(entry).items():
        _objects[name] = obj
        occupant = table.get(name)
        if occupant is None or occupant is _ours.get(name):
            table[name] = _ours[name] = obj
        elif isinstance(obj, NamedActivation) and inspect.isclass(occupant):
            # Keras would return the class uncalled for `activation=name`; take the
            # name, and keep building that class for lookups that build from it.
            obj.from_config = occupant.from_config
            table[name] = _ours[name] = obj


@functools.cache
def _expose_activation_class() -> None:
    from bnn_cli._keras import keras  # (lazy: only registering needs Keras)

    keras.saving.register_keras_serializable(PACKAGE)(NamedActivation)
    table = keras.utils.get_custom_objects()
    # HDF5 files name classes by their plain name; earlier releases wrote other names.
    for name in ("NamedActivation", *_FORMER_ACTIVATION_CLASSES):
        table.setdefault(name, NamedActivation)
        table[f"{PACKAGE}>{name}"] = NamedActivation


def keras_objects() -> dict[str, Any]:
    """Every plain name bnn_cli gives Keras, with bnn_cli's object for it."""
    return {"NamedActivation": NamedActivation, **_objects}


@contextlib.contextmanager
def keras_scope() -> Iterator[None]:
    """Keras resolves plain names to bnn_cli's components inside this block, whatever
    another library (Larq) put into Keras's global table. bnn_cli's loaders use it.

    tf-keras lets its global table override both ``custom_objects`` and
    ``custom_object_scope`` when it reads a ``.keras`` file, so the names are swapped in
    the global table itself for the block, and put back after it.
    """
    from bnn_cli._keras import keras  # (lazy: only registering needs Keras)

    load_builtins()
    table = keras.utils.get_custom_objects()
    ours = keras_objects()
    saved = {name: table[name] for name in ours if name in table}
    table.update(ours)
    try:
        with keras.utils.custom_object_scope(ours):  # (HDF5's loader reads the scope)
            yield
    finally:
        for name in ours:
            if name in saved:
                table[name] = saved[name]
            else:
                table.pop(name, None)


# ---------------------------------------------------------------------------------------
# Introspection helpers
# ---------------------------------------------------------------------------------------


def signature_params(obj: Any, *, skip: Iterable[str] = ()) -> tuple[Param, ...]:
    """The named parameters of a class's ``__init__`` or of a function.

    ``*args``/``**kwargs``, ``self``, a function's first argument (its input tensor) and
    the names in ``skip`` are left out.
    """
    target = obj.__init__ if inspect.isclass(obj) else obj
    try:
        parameters = list(inspect.signature(target).parameters.values())
    except (TypeError, ValueError):
        return ()
    if not inspect.isclass(obj):
        parameters = parameters[1:]
    skip = {"self", *skip}
    return tuple(
        Param(p.name, p.default)
        for p in parameters
        if p.name not in skip and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    )


def first_doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0].strip() if doc.strip() else ""


def _module_of(obj: Any) -> str:
    return getattr(obj, "__module__", None) or ""


def _describe(obj: Any) -> str:
    return f"{_module_of(obj) or '?'}.{getattr(obj, '__qualname__', repr(obj))}"


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    return repr(value)
