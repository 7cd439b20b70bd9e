r"""Quantized layers: Keras layers whose inputs and weights pass through quantizers.

Every layer computes ``y = act(f(q_kernel(w), q_input(x)) + b)`` with real-valued latent
weights ``w``: the input is quantized, the kernels are quantized, and then the Keras
layer's *own* ``call`` runs on them. One mechanism (:class:`QuantizerMixin`) serves all
layers; each class only names which of its variables have which quantizer. With every
quantizer ``None`` a layer is exactly its Keras counterpart.

The convolutions also take ``pad_values``: with ``padding="same"`` the input is padded
with this constant (e.g. ``1.0``) instead of zeros, so binary inputs stay binary.
"""

from __future__ import annotations

import contextlib
import logging
import numbers
from collections.abc import Iterator
from typing import Any, ClassVar

import numpy as np

from bnn_cli import activations as _activations  # noqa: F401  registers "hard_tanh"...
from bnn_cli import constraints as _constraints  # noqa: F401  registers "weight_clip"
from bnn_cli import quantizers
from bnn_cli._keras import in_training_call, keras, tf
from bnn_cli.context import should_quantize
from bnn_cli.metrics import get_training_metrics
from bnn_cli.quantized_variable import QuantizedVariable
from bnn_cli.registry import REGISTRY, NamedActivation, Param, register, signature_params

log = logging.getLogger(__name__)

__all__ = [
    "LearnedShift",
    "QuantConv1D",
    "QuantConv2D",
    "QuantConv2DTranspose",
    "QuantConv3D",
    "QuantConv3DTranspose",
    "QuantDense",
    "QuantDepthwiseConv2D",
    "QuantLocallyConnected1D",
    "QuantLocallyConnected2D",
    "QuantSeparableConv1D",
    "QuantSeparableConv2D",
    "QuantizerBase",
    "QuantizerBaseConv",
    "QuantizerDepthwiseBase",
    "QuantizerMixin",
    "QuantizerSeparableBase",
]


@contextlib.contextmanager
def _swapped(obj: Any, name: str, value: Any) -> Iterator[None]:
    """Temporarily replace an attribute, bypassing Keras's attribute tracking.

    ``object.__setattr__`` keeps Keras from un-tracking the variable we put back.
    """
    original = obj.__dict__[name]
    object.__setattr__(obj, name, value)
    try:
        yield
    finally:
        object.__setattr__(obj, name, original)


def _kernel_quantizer(identifier: Any) -> Any:
    """A kernel quantizer that tracks the metrics of the active ``metrics_scope`` (as
    Larq's ``get_kernel_quantizer``), e.g. the flip ratio of binary weights."""

    quantizer = quantizers.get(identifier)
    scoped = get_training_metrics()
    if isinstance(quantizer, quantizers.BaseQuantizer) and scoped \
            and not quantizer._custom_metrics:
        quantizer._custom_metrics = sorted(scoped)
    return quantizer


def _own_names(kwargs: dict[str, Any]) -> dict[str, Any]:
    """bnn_cli's names in ``activation`` and ``*_constraint`` as bnn_cli's objects.

    Keras would look them up in its global table, where Larq, imported after bnn_cli,
    puts its own objects under the same names.
    """
    resolved = dict(kwargs)
    for arg, value in kwargs.items():
        if not isinstance(value, str):
            continue
        if arg == "activation" and (REGISTRY.find("activation", value)
                                    or REGISTRY.find("quantizer", value)):
            resolved[arg] = NamedActivation(value)
        elif arg.endswith("_constraint") and (entry := REGISTRY.find("constraint", value)):
            resolved[arg] = entry.obj()
    return resolved


def is_binary(quantizer: Any) -> bool:
    """A 1-bit quantizer that actually quantizes (``NoOp(precision=1)`` only marks)."""
    return getattr(quantizer, "precision", None) == 1 and not isinstance(
        quantizer, quantizers.NoOp
    )


class QuantizerMixin:
    """Quantize the input and the kernels, then run the Keras layer's own computation.

    Subclasses list their quantized variables in ``_quantized_weights`` as
    ``(quantizer argument, variable attribute)`` pairs. The constraint checked for the
    starved-weights warning is the argument's prefix + ``_constraint``
    (``kernel_quantizer`` -> ``kernel_constraint``).
    """

    _quantized_weights: ClassVar[tuple[tuple[str, str], ...]] = (("kernel_quantizer", "kernel"),)

    def __init__(self, *args: Any, input_quantizer: Any = None, **kwargs: Any):
        given = {arg: kwargs.pop(arg, None) for arg, _ in self._quantized_weights}
        super().__init__(*args, **_own_names(kwargs))
        self.input_quantizer = quantizers.get(input_quantizer)
        for arg, value in given.items():
            setattr(self, arg, _kernel_quantizer(value))
            self._warn_if_starved(arg)

    def _warn_if_starved(self, arg: str) -> None:
        constraint = arg.replace("_quantizer", "_constraint")
        if is_binary(getattr(self, arg)) and not getattr(self, constraint, None):
            log.warning(
                "%s: using a binary `%s` without setting `%s` may result in starved "
                "weights (where the gradient is always zero).", self.name, arg, constraint
            )

    def build_from_config(self, config):
        # Keras rebuilds loaded layers outside their name scope; without it every quantized
        # kernel would be named "kernel:0" and optimizer slots would collide in .h5 files.
        with tf.name_scope(self.name):
            super().build_from_config(config)

    def build(self, input_shape):
        super().build(input_shape)
        # Tag variables with their precision, for summaries and optimizers such as Bop.
        for arg, attr in self._quantized_weights:
            precision = getattr(getattr(self, arg), "precision", None)
            if precision is not None:
                getattr(self, attr).precision = precision

    def call(self, inputs):
        if self.input_quantizer is not None:
            inputs = self.input_quantizer(inputs)
        with contextlib.ExitStack() as stack:
            for arg, attr in self._quantized_weights:
                quantizer = getattr(self, arg)
                if quantizer is not None:
                    # The variable's value as a tensor: under a mixed-precision policy the
                    # variable is Keras's AutoCastVariable (read in the compute type),
                    # which a quantizer's tf.custom_gradient must not receive as such.
                    value = tf.convert_to_tensor(getattr(self, attr))
                    stack.enter_context(_swapped(self, attr, quantizer(value)))
            return super().call(inputs)

    def quantized_weights(self) -> dict[str, tf.Tensor]:
        """Each quantized variable's quantized value (e.g. the +-1 kernel) by attribute."""
        return {
            attr: (getattr(self, arg) or tf.identity)(tf.convert_to_tensor(getattr(self, attr)))
            for arg, attr in self._quantized_weights
        }

    # Inside quantized_scope(True), weights read out of the layer are the quantized ones
    # (as Larq's QuantizedVariable kernels): get_weights, weights, saving to .h5/.keras.

    def _scoped(self, variables: list) -> list:
        """``variables``, the quantized ones as QuantizedVariable views in the scope."""
        if not should_quantize():
            return variables
        views = {}
        for arg, attr in self._quantized_weights:
            quantizer, variable = getattr(self, arg), getattr(self, attr, None)
            if quantizer is not None and variable is not None:
                # The values alone: neither the quantizer layer's metrics nor its dtype.
                views[id(variable)] = QuantizedVariable.from_variable(
                    variable, getattr(quantizer, "quantize", quantizer),
                    getattr(quantizer, "precision", None))
        return [views.get(id(v), v) for v in variables]

    @property
    def trainable_weights(self):
        return self._scoped(super().trainable_weights)

    @property
    def non_trainable_weights(self):
        return self._scoped(super().non_trainable_weights)

    def save_own_variables(self, store):
        # Keras's own (for .keras files) reads its private lists, not the properties above;
        # this is it, on the scoped variables.
        if not should_quantize():
            return super().save_own_variables(store)
        own = self._scoped(self._trainable_weights + self._non_trainable_weights)
        for i, variable in enumerate(own):
            store[f"{i}"] = variable.numpy()

    def get_config(self):
        config = {**super().get_config(),
                  "input_quantizer": quantizers.serialize(self.input_quantizer)}
        for arg, _ in self._quantized_weights:
            config[arg] = quantizers.serialize(getattr(self, arg))
        return config


def _runs_convolution_op(layer: Any) -> bool:
    """Whether the layer's Keras ``call`` computes through ``convolution_op`` with
    ``layer.padding``: Conv1D, Conv2D, Conv3D (not their transposes, nor the depthwise and
    separable convolutions, which call TensorFlow themselves)."""
    layers = keras.layers
    return isinstance(layer, (layers.Conv1D, layers.Conv2D, layers.Conv3D)) and \
        not isinstance(layer, (layers.Conv2DTranspose, layers.Conv3DTranspose))


class PadValuesMixin:
    """``padding="same"`` with a constant other than zero (``pad_values``).

    With a non-zero ``pad_values`` the layer pads its input explicitly and runs the Keras
    convolution with ``padding="valid"``; with zeros it uses the native padding.

    In training, a plain convolution (Conv1D, Conv2D, Conv3D) skips the padded copy of its
    input: ``conv(pad(x, v), w) = conv_same(x, w) + border(w)``. The border term depends
    only on the kernel: an output position gets ``v`` times the sum of the kernel taps
    that fall outside the input, ``border = v * M @ sum_over_input_channels(w)``, where
    ``M[position, tap]`` is 1 for a tap outside (a constant of the layer's shapes), taken
    only for the positions next to the border. It is one small matrix product, where a
    convolution of one padded example of zeros cost oneDNN calls of its own in both
    directions (in ``scripts/profile_step.py``'s op times, about a third of the BNN
    step's overhead over full precision). Outside training the explicit padding stays,
    which is the pattern the Larq Compute Engine converter fuses into its binary
    convolution.
    """

    def __init__(self, *args: Any, pad_values: float = 0.0, **kwargs: Any):
        super().__init__(*args, **kwargs)
        # (one constant for every padded value: a list would fail only inside a step)
        if isinstance(pad_values, bool) or not isinstance(pad_values, numbers.Real):
            raise ValueError(f"pad_values must be a number, got {pad_values!r}")
        self.pad_values = pad_values
        native = self.padding != "same" or self.pad_values == 0.0
        if self.padding == "causal" and self.pad_values != 0.0:
            raise ValueError("causal padding with pad_values != 0 is not supported")
        self._native_padding = native
        # (the Keras layers whose call runs convolution_op with self.padding)
        self._border_term = not native and _runs_convolution_op(self)

    def _same_padding(self, spatial_shape: list) -> list[list]:
        """[before, after] per spatial axis that makes "valid" behave like "same"."""
        pads = []
        for size, k, s, d in zip(spatial_shape, self.kernel_size, self.strides,
                                 self.dilation_rate, strict=False):
            effective = (k - 1) * d + 1
            out = (size + s - 1) // s
            total = tf.maximum((out - 1) * s + effective - size, 0)
            pads.append([total // 2, total - total // 2])
        return pads

    def _spatial(self, shape) -> list:
        return list(shape[1:-1] if self.data_format == "channels_last" else shape[2:])

    def _full_padding(self, spatial_pads: list[list]) -> list[list]:
        if self.data_format == "channels_last":
            return [[0, 0], *spatial_pads, [0, 0]]
        return [[0, 0], [0, 0], *spatial_pads]

    def _padded(self, inputs: tf.Tensor) -> tf.Tensor:
        # (each size as a number where it is known, else as a tensor)
        shape = [n if n is not None else tf.shape(inputs)[i]
                 for i, n in enumerate(inputs.shape)]
        paddings = self._full_padding(self._same_padding(self._spatial(shape)))
        return tf.pad(inputs, paddings, constant_values=self.pad_values)

    def build(self, input_shape):
        if self._native_padding:
            return super().build(input_shape)
        shape = tf.TensorShape(input_shape).as_list()
        padded = self._full_padding(self._same_padding(
            [s if s is not None else 0 for s in self._spatial(shape)]))
        padded_shape = [
            None if dim is None else dim + int(before) + int(after)
            for dim, (before, after) in zip(shape, padded, strict=False)
        ]
        with _swapped(self, "padding", "valid"):
            super().build(tf.TensorShape(padded_shape))

    def call(self, inputs):
        if self._native_padding:
            return super().call(inputs)
        if self._border_term and in_training_call():
            return super().call(inputs)  # convolution_op adds the border term
        with _swapped(self, "padding", "valid"):
            return super().call(self._padded(inputs))

    def convolution_op(self, inputs, kernel):
        outputs = super().convolution_op(inputs, kernel)
        if self.padding != "same" or self._native_padding:
            return outputs  # (native, or inside call's explicit padding: "valid")
        spatial = self._spatial(inputs.shape)
        if None in spatial:  # (no static shape to build M from: one padded example)
            one = tf.zeros(tf.concat([[1], tf.shape(inputs)[1:]], 0), outputs.dtype)
            with _swapped(self, "padding", "valid"):
                return outputs + super().convolution_op(self._padded(one), kernel)
        outside = self._outside_taps(spatial)  # (output positions, kernel taps)
        rows = np.flatnonzero(outside.any(axis=1))  # the positions a pad reaches
        if rows.size == 0:
            return outputs
        # B repeats each tap's column once per input channel, so that B @ kernel (as
        # (taps * input channels, filters)) sums each tap over its input channels: one
        # matrix product, whose gradient needs no broadcast of the kernel's shape.
        b = np.repeat(outside[rows], kernel.shape[-2], axis=1) * self.pad_values
        border = tf.matmul(tf.constant(b, kernel.dtype),
                           tf.reshape(kernel, [b.shape[1], -1]))  # (rows, filters)
        border = tf.scatter_nd(rows[:, None].astype(np.int32), border,
                               [outside.shape[0], border.shape[1]])
        out_spatial = [-(-size // s) for size, s in zip(spatial, self.strides, strict=True)]
        if self.data_format == "channels_last":
            return outputs + tf.reshape(border, [1, *out_spatial, -1])
        return outputs + tf.reshape(tf.transpose(border), [1, -1, *out_spatial])

    def _outside_taps(self, spatial: list[int]) -> np.ndarray:
        """M: 1 where an output position's kernel tap falls outside the input, as
        (output positions, kernel taps), each in row-major order."""
        rank = len(spatial)
        inside = np.ones([1] * 2 * rank, bool)  # (*output positions, *kernel taps)
        for i, (size, k, s, d) in enumerate(zip(spatial, self.kernel_size, self.strides,
                                                self.dilation_rate, strict=True)):
            out = -(-size // s)
            before = max((out - 1) * s + (k - 1) * d + 1 - size, 0) // 2  # as "same"
            index = np.arange(out)[:, None] * s - before + np.arange(k)[None, :] * d
            shape = [1] * 2 * rank
            shape[i], shape[rank + i] = out, k
            inside = inside & ((index >= 0) & (index < size)).reshape(shape)
        positions = int(np.prod(inside.shape[:rank]))
        return (~inside).reshape(positions, -1).astype(np.float32)

    def get_config(self):
        return {**super().get_config(), "pad_values": float(self.pad_values)}


_DEPTHWISE = (("depthwise_quantizer", "depthwise_kernel"),)
_SEPARABLE = (("depthwise_quantizer", "depthwise_kernel"),
              ("pointwise_quantizer", "pointwise_kernel"))


# Larq's base classes, for layers written the Larq way:
# ``class MyDense(QuantizerBase, keras.layers.Dense)`` is a quantized Dense. A layer whose
# variables have other names lists them in ``_quantized_weights`` (Larq: ``_get_quantizer``).


class QuantizerBase(QuantizerMixin, keras.layers.Layer):
    """Base class of quantized layers with one kernel: ``input_quantizer`` and
    ``kernel_quantizer`` (for the ``kernel`` variable)."""

    _quantized_weights = (("kernel_quantizer", "kernel"),)


class QuantizerDepthwiseBase(QuantizerMixin, keras.layers.Layer):
    """Base class of depthwise quantized layers: ``input_quantizer`` and
    ``depthwise_quantizer`` (for the ``depthwise_kernel`` variable)."""

    _quantized_weights = _DEPTHWISE


class QuantizerSeparableBase(QuantizerMixin, keras.layers.Layer):
    """Base class of separable quantized layers: ``input_quantizer``,
    ``depthwise_quantizer`` and ``pointwise_quantizer`` (for ``depthwise_kernel`` and
    ``pointwise_kernel``)."""

    _quantized_weights = _SEPARABLE


class QuantizerBaseConv(PadValuesMixin, keras.layers.Layer):
    """Base class of quantized convolutions: adds ``pad_values`` (see
    :class:`PadValuesMixin`). Combine with one of the quantizer bases above."""


class QuantDense(QuantizerBase, keras.layers.Dense):
    """Densely connected layer with quantized inputs and kernel.

    ``y = activation(q_input(x) @ q_kernel(w) + b)``. Takes every ``keras.layers.Dense``
    argument plus ``input_quantizer`` and ``kernel_quantizer``.
    """


class QuantConv1D(QuantizerBase, QuantizerBaseConv, keras.layers.Conv1D):
    """1D convolution with quantized inputs and kernel, and ``pad_values``."""


class QuantConv2D(QuantizerBase, QuantizerBaseConv, keras.layers.Conv2D):
    """2D convolution with quantized inputs and kernel, and ``pad_values``.

    ``y = activation(conv2d(q_input(x), q_kernel(w)) + b)``; with ``padding="same"`` the
    quantized input is padded with ``pad_values``.
    """


class QuantConv3D(QuantizerBase, QuantizerBaseConv, keras.layers.Conv3D):
    """3D convolution with quantized inputs and kernel, and ``pad_values``."""


class QuantDepthwiseConv2D(QuantizerDepthwiseBase, QuantizerBaseConv,
                           keras.layers.DepthwiseConv2D):
    """Depthwise 2D convolution with quantized inputs and ``depthwise_quantizer``."""


class QuantSeparableConv1D(QuantizerSeparableBase, QuantizerBaseConv,
                           keras.layers.SeparableConv1D):
    """Separable 1D convolution with ``depthwise_quantizer`` and ``pointwise_quantizer``."""


class QuantSeparableConv2D(QuantizerSeparableBase, QuantizerBaseConv,
                           keras.layers.SeparableConv2D):
    """Separable 2D convolution with ``depthwise_quantizer`` and ``pointwise_quantizer``."""


class QuantConv2DTranspose(QuantizerBase, keras.layers.Conv2DTranspose):
    """Transposed 2D convolution with quantized inputs and kernel."""


class QuantConv3DTranspose(QuantizerBase, keras.layers.Conv3DTranspose):
    """Transposed 3D convolution with quantized inputs and kernel."""


class QuantLocallyConnected1D(QuantizerBase, keras.layers.LocallyConnected1D):
    """Locally connected 1D layer (unshared weights) with quantized inputs and kernel."""


class QuantLocallyConnected2D(QuantizerBase, keras.layers.LocallyConnected2D):
    """Locally connected 2D layer (unshared weights) with quantized inputs and kernel."""


class LearnedShift(keras.layers.Layer):
    """``y = x + b``, with a learned shift ``b`` per channel (zeros at first).

    Not one of Larq's layers: the published BNNs after Larq's zoo need it. It is
    ReActNet's ``LearnableBias`` (Liu et al., ECCV 2020): before a binary convolution
    it makes RSign, ``sign(x - b)`` with a learned threshold, and around a PReLU it
    makes RPReLU, ``PReLU(x - g) + z``. Its weight, ``shift``, is of the kind
    ``shifts`` for an optimizer's ``weight_decay``.
    """

    def __init__(self, shift_initializer: Any = "zeros", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.shift_initializer = keras.initializers.get(shift_initializer)

    def build(self, input_shape: Any) -> None:
        self.shift = self.add_weight(name="shift", shape=(input_shape[-1],),
                                     initializer=self.shift_initializer, trainable=True)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return inputs + self.shift

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(),
                "shift_initializer": keras.initializers.serialize(self.shift_initializer)}


QUANT_LAYERS = (
    QuantDense, QuantConv1D, QuantConv2D, QuantConv3D, QuantDepthwiseConv2D,
    QuantSeparableConv1D, QuantSeparableConv2D, QuantConv2DTranspose, QuantConv3DTranspose,
    QuantLocallyConnected1D, QuantLocallyConnected2D,
)


def layer_params(cls: type) -> tuple[Param, ...]:
    """The constructor arguments of a layer: every ``__init__`` up its class chain, down
    to (and including) the Keras layer it builds on; ``**kwargs`` pass-through skipped."""
    params: dict[str, Param] = {}
    if issubclass(cls, QuantizerMixin):
        params["input_quantizer"] = Param("input_quantizer", None)
        params.update({arg: Param(arg, None) for arg, _ in cls._quantized_weights})
    if issubclass(cls, PadValuesMixin):
        params["pad_values"] = Param("pad_values", 0.0)
    for klass in cls.__mro__:
        if "__init__" in vars(klass) and klass not in (QuantizerMixin, PadValuesMixin):
            for p in signature_params(klass):
                params.setdefault(p.name, p)
        if klass.__module__.startswith("tf_keras"):
            break
    return tuple(params.values())


def register_layer(cls: type | None = None, *, name: str | None = None,
                   replace: bool = False):
    """Register a Keras layer class so that YAML model specs can name it by ``type``."""

    def decorator(target: type) -> type:
        return register("layer", target, name=name, params=layer_params(target),
                        replace=replace)

    return decorator if cls is None else decorator(cls)


def _keras_layer_classes() -> dict[type, list[str]]:
    """Every public layer class of ``keras.layers`` with all the names it has there."""
    found: dict[type, list[str]] = {}
    for name in dir(keras.layers):
        obj = getattr(keras.layers, name)
        if isinstance(obj, type) and issubclass(obj, keras.layers.Layer) and name[0] != "_":
            found.setdefault(obj, []).append(name)
    return found


for _cls in (*QUANT_LAYERS, LearnedShift):
    register_layer(_cls)
for _cls, _names in _keras_layer_classes().items():
    _name = _cls.__name__ if _cls.__name__ in _names else _names[0]
    register("layer", _cls, name=_name, aliases=[n for n in _names if n != _name],
             params=layer_params(_cls))
