"""Small helpers, with Larq's names (as ``larq.utils``).

``register_keras_custom_object`` and ``register_alias`` are spellings of
:func:`bnn_cli.registry.register`, the one registration path: the object is recorded in
bnn_cli's registry under the kind its class implies (so configs, ``quantizers.get`` and
``bnn list-*`` find it) and made known to Keras, so that models using it load again.
As everywhere in bnn_cli, a name already held by another object is an error rather than
a silent replacement (Larq overwrites Keras's table).
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from bnn_cli import layers, models, quantizers
from bnn_cli._keras import keras
from bnn_cli.errors import UserError
from bnn_cli.registry import REGISTRY, register

__all__ = [
    "memory_as_readable_str",
    "patch_object",
    "register_alias",
    "register_keras_custom_object",
    "set_precision",
]

T = TypeVar("T")

# Base class -> registry kind, most specific first (quantizers and metrics are also
# Keras layers).
_KINDS: tuple[tuple[type, str], ...] = (
    (quantizers.Quantizer, "quantizer"),
    (keras.metrics.Metric, "metric"),
    (keras.layers.Layer, "layer"),
    (keras.constraints.Constraint, "constraint"),
    (keras.optimizers.Optimizer, "optimizer"),
    (keras.optimizers.legacy.Optimizer, "optimizer"),
    (keras.optimizers.schedules.LearningRateSchedule, "schedule"),
    (keras.callbacks.Callback, "callback"),
    (keras.initializers.Initializer, "initializer"),
    (keras.regularizers.Regularizer, "regularizer"),
)


def memory_as_readable_str(num_bits: int) -> str:
    """A memory size given in bits as bytes in binary units: ``8 * 1536`` -> ``"1.50 KiB"``.

    Units ``B``, ``KiB``, ``MiB``, ``GiB`` (1 KiB = 1024 B), two decimals and thousands
    separators; sizes of 1024 GiB and more stay in GiB.
    """
    return models._readable_memory(num_bits)


def set_precision(precision: int = 32) -> Callable[[T], T]:
    """Decorator that marks a quantizer function with its ``precision`` (in bits).

    Summaries and optimizers such as :class:`bnn_cli.optimizers.Bop` read it. Put it
    below a registering decorator (``@register_keras_custom_object``,
    ``@quantizers.register_quantizer``), which records the precision it finds.
    """

    def decorator(function: T) -> T:
        function.precision = precision  # type: ignore[attr-defined]
        return function

    return decorator


@contextlib.contextmanager
def patch_object(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``obj.name = value`` for the block, then set the previous value back.

    The attribute must exist (``AttributeError`` otherwise). Both assignments go through
    ``setattr``, so a class attribute read through an instance is put back on the
    instance. The value is restored also when the block raises.
    """
    previous = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, previous)


def _kind_of(obj: Any) -> str:
    """The registry kind of an object: from its base class, or ``"quantizer"`` for a
    function (quantizer names also work as activations, so a function registered the
    Larq way serves as either)."""
    if inspect.isclass(obj):
        for base, kind in _KINDS:
            if issubclass(obj, base):
                return kind
        raise UserError(
            f"cannot register {obj.__name__}: it is none of the component kinds bnn_cli "
            "knows (a quantizer, Keras layer, constraint, metric, optimizer, learning-rate "
            "schedule, callback, initializer or regularizer)"
        )
    if callable(obj):
        return "quantizer"
    raise UserError(f"cannot register {obj!r}: not a class or a function")


def _register(obj: T, name: str) -> T:
    """Register ``obj`` under ``name``; an object already registered keeps its entry
    and gains ``name`` as an alias."""
    kind = _kind_of(obj)
    entry = REGISTRY.find_obj(kind, obj)
    if entry is not None:
        if name in entry.names:
            return obj
        return register(kind, obj, name=entry.name, aliases=(*entry.aliases, name),
                        precision=entry.precision, params=entry.params,
                        summary=entry.summary)
    if kind == "quantizer":
        return quantizers.register_quantizer(obj, name=name)
    if kind == "layer":
        return layers.register_layer(obj, name=name)
    return register(kind, obj, name=name)


def register_keras_custom_object(cls: T) -> T:
    """Decorator that registers a class or function under its ``__name__``.

    Its kind follows from its base class (quantizer, layer, constraint, metric,
    optimizer, schedule, callback, initializer, regularizer); a function is registered
    as a quantizer, with the ``precision`` that :func:`set_precision` gave it, and also
    works as an activation. Returns the object unchanged.
    """
    return _register(cls, cls.__name__)  # type: ignore[attr-defined]


def register_alias(name: str) -> Callable[[T], T]:
    """Decorator that registers a class or function under ``name``.

    As :func:`register_keras_custom_object`, with another name; on an object that is
    registered already, ``name`` becomes one more alias of its entry::

        @register_alias("degeneration")
        class Degeneration(keras.metrics.Metric): ...
    """

    def decorator(obj: T) -> T:
        return _register(obj, name)

    return decorator
