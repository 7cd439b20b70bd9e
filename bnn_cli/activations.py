r"""Activation functions for quantized networks (as ``larq.activations``).

Use them by name or as objects, in a layer's ``activation`` or an ``Activation`` layer::

    QuantDense(64, activation="hard_tanh")
    keras.layers.Activation("leaky_tanh")
    QuantDense(64, activation=bnn_cli.activations.hard_tanh)
    QuantDense(64, activation=bnn_cli.activations.leaky_tanh.with_args(alpha=0.1))

Each public activation is a :class:`SerializableActivation`: a callable object with
``get_config`` rather than a plain function, because tf-keras writes custom *functions*
in a form its own HDF5 loader cannot read. A registered object round-trips through both
the Keras (``.keras``) and the HDF5 (``.h5``) formats, whether the model named it by
string or received the object itself.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from bnn_cli._keras import keras, tf
from bnn_cli.registry import REGISTRY, Entry, first_doc_line, signature_params

__all__ = [
    "SerializableActivation",
    "hard_tanh",
    "leaky_tanh",
    "register_activation",
]

_KERAS_PACKAGE = "bnn_cli"


class SerializableActivation:
    """A registered activation function that Keras can save by name.

    Calling it calls the function with the stored keyword arguments (overridable per
    call). ``get_config()`` is ``{"name": NAME, **kwargs}``; loading looks the name up
    in the registry (kind ``"activation"``).
    """

    def __init__(self, fn: Callable[..., tf.Tensor], name: str | None = None, **kwargs: Any):
        if isinstance(fn, SerializableActivation):
            kwargs = {**fn.kwargs, **kwargs}
            fn = fn.fn
        _check_kwargs(fn, kwargs)
        # Name, docstring and signature of the function, for help() and the registry.
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = name or fn.__name__
        self.kwargs = kwargs

    def __call__(self, x: tf.Tensor, **kwargs: Any) -> tf.Tensor:
        return self.fn(x, **{**self.kwargs, **kwargs})

    def with_args(self, **kwargs: Any) -> SerializableActivation:
        """The same activation with other default arguments, e.g. ``alpha=0.1``."""
        return SerializableActivation(self, name=self.name, **kwargs)

    def get_config(self) -> dict[str, Any]:
        return {"name": self.name, **self.kwargs}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SerializableActivation:
        config = dict(config)
        entry = REGISTRY.get("activation", config.pop("name"))
        return cls(entry.obj, name=entry.name, **config)

    def __repr__(self) -> str:
        args = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"SerializableActivation({self.name!r}{args})"


def _check_kwargs(fn: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Unknown arguments fail here rather than at the first call inside a model."""
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return
    try:
        signature.bind_partial(None, **kwargs)
    except TypeError:
        known = list(signature.parameters)[1:]
        raise ValueError(f"activation {fn.__name__!r} takes argument(s) {known}, got "
                         f"{sorted(kwargs)}") from None


def register_activation(
    fn: Callable[..., tf.Tensor] | None = None,
    *,
    name: str | None = None,
    aliases: tuple[str, ...] = (),
    replace: bool = False,
    builtin: bool = False,
):
    """Register an activation function so that Keras and YAML configs can name it.

    Works as ``@register_activation`` or ``@register_activation(name="my_act")``. The
    function takes the input tensor first; its other arguments need defaults. Returns
    the :class:`SerializableActivation` that wraps it (use it like the function).
    """

    def decorator(target: Callable[..., tf.Tensor]) -> SerializableActivation:
        activation = SerializableActivation(target, name=name)
        REGISTRY.add(Entry(
            kind="activation", name=activation.name, obj=activation, aliases=tuple(aliases),
            params=signature_params(activation.fn, skip=_first_arg(activation.fn)),
            summary=first_doc_line(activation.fn), builtin=builtin,
        ), replace=replace)
        custom_objects = keras.utils.get_custom_objects()
        for alias in (activation.name, *aliases):
            custom_objects[alias] = activation
        return activation

    return decorator if fn is None else decorator(fn)


def _first_arg(fn: Callable[..., Any]) -> tuple[str, ...]:
    """The input argument's name, left out of the registry's parameter list."""
    try:
        return tuple(inspect.signature(fn).parameters)[:1]
    except (TypeError, ValueError):
        return ()


def _hard_tanh(x: tf.Tensor) -> tf.Tensor:
    r"""Hard tanh: f(x) = min(max(x, -1), 1).

    The gradient is 1 inside ``[-1, 1]`` (both ends included) and 0 outside.
    """
    return tf.clip_by_value(x, -1.0, 1.0)


def _leaky_tanh(x: tf.Tensor, alpha: float = 0.2) -> tf.Tensor:
    r"""Leaky tanh: hard tanh with slope alpha outside [-1, 1].

    ``f(x) = x`` for ``|x| <= 1``, ``1 + alpha (x - 1)`` for ``x > 1`` and
    ``-1 + alpha (x + 1)`` for ``x < -1``; like leaky ReLU, the gradient outside is
    ``alpha`` instead of 0.

    Args:
        alpha: the slope outside ``[-1, 1]``.
    """
    # Written as hard tanh plus the two leaky parts so that at x = +-1 the gradient is
    # the sum of the terms' gradients, as in Larq (1 + alpha there).
    return (
        tf.clip_by_value(x, -1.0, 1.0)
        + (tf.math.maximum(x, 1.0) - 1.0) * alpha
        + (tf.math.minimum(x, -1.0) + 1.0) * alpha
    )


_hard_tanh.__name__ = _hard_tanh.__qualname__ = "hard_tanh"
_leaky_tanh.__name__ = _leaky_tanh.__qualname__ = "leaky_tanh"

keras.saving.register_keras_serializable(_KERAS_PACKAGE)(SerializableActivation)
keras.utils.get_custom_objects()["SerializableActivation"] = SerializableActivation

hard_tanh = register_activation(_hard_tanh, builtin=True)
leaky_tanh = register_activation(_leaky_tanh, builtin=True)
