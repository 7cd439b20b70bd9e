r"""Activation functions for quantized networks (as ``larq.activations``).

Use them by name or as objects, in a layer's ``activation`` or an ``Activation`` layer::

    QuantDense(64, activation="hard_tanh")
    keras.layers.Activation("leaky_tanh")
    QuantDense(64, activation=bnn_cli.activations.hard_tanh)
    QuantDense(64, activation=bnn_cli.activations.leaky_tanh.with_args(alpha=0.1))

Each public activation is a :class:`~bnn_cli.registry.NamedActivation`: a callable object
with ``get_config``, which round-trips through both the Keras (``.keras``) and the HDF5
(``.h5``) formats, whether the model named it by string or received the object itself.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

from bnn_cli._keras import tf
from bnn_cli.registry import NamedActivation, keras_objects, register

__all__ = ["NamedActivation", "hard_tanh", "leaky_tanh", "register_activation"]


def register_activation(
    fn: Callable[..., tf.Tensor] | None = None,
    *,
    name: str | None = None,
    aliases: tuple[str, ...] = (),
    replace: bool = False,
):
    """Register an activation function so that Keras and YAML configs can name it.

    Works as ``@register_activation`` or ``@register_activation(name="my_act")``. The
    function takes the input tensor first; its other arguments need defaults. Returns
    the :class:`NamedActivation` for it (use it like the function).
    """

    def decorator(target: Callable[..., tf.Tensor]) -> NamedActivation:
        register("activation", target, name=name, aliases=aliases, replace=replace)
        activation = keras_objects()[name or target.__name__]  # what Keras finds by name
        # Name, docstring and signature of the function, for help().
        functools.update_wrapper(activation, target)
        activation.__name__ = activation.name
        return activation

    return decorator if fn is None else decorator(fn)


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

hard_tanh = register_activation(_hard_tanh)
leaky_tanh = register_activation(_leaky_tanh)
