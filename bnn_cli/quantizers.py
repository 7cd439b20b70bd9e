r"""Quantizers: full-precision values to a small set in the forward pass, a
pseudo-gradient in the backward pass.

The true gradient of a step function is zero almost everywhere, so each quantizer pairs
its forward function with a pseudo-gradient built with ``tf.custom_gradient``. Names,
arguments, defaults and numerics follow Larq 0.14.

Quantizers are used three ways, all equivalent for the same arguments::

    QuantDense(64, input_quantizer="ste_sign")            # by name, in a layer
    QuantDense(64, input_quantizer=SteSign(clip_value=1.0))  # as an object
    Activation("ste_sign")(x) == SteSign()(x)              # as an activation

Custom quantizers are registered with :func:`register_quantizer` and can then be named
by string everywhere a built-in one can.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from bnn_cli import math as bmath
from bnn_cli._keras import keras, tf
from bnn_cli.errors import UserError
from bnn_cli.metrics import FlipRatio
from bnn_cli.registry import REGISTRY, NamedActivation, register

__all__ = [
    "ApproxSign",
    "BaseQuantizer",
    "DoReFa",
    "DoReFaQuantizer",
    "MagnitudeAwareSign",
    "MagnitudeAwareSignUnclipped",
    "NoOp",
    "NoOpQuantizer",
    "Quantizer",
    "SteHeaviside",
    "SteSign",
    "SteTern",
    "SwishSign",
    "XnorWeightScale",
    "approx_sign",
    "deserialize",
    "get",
    "register_quantizer",
    "serialize",
    "ste_heaviside",
    "ste_sign",
    "ste_tern",
    "swish_sign",
]

QuantizerLike = Callable[[tf.Tensor], tf.Tensor]

# ---------------------------------------------------------------------------------------
# Quantizer functions: forward value and pseudo-gradient.
# ---------------------------------------------------------------------------------------


# Beyond this, the fake quantization's range 2c would overflow float32; the op only
# takes float32 (float16 and bfloat16 gradients take the select).
_ONE_OP_MASK_LIMIT = 1e38


def _clipped_gradient(x: tf.Tensor, dy: tf.Tensor, clip_value: float | None) -> tf.Tensor:
    """``dy`` where ``|x| <= clip_value`` (the boundary passes), zero elsewhere."""
    if clip_value is None:
        return dy
    if dy.dtype == tf.float32 and 0 < clip_value <= _ONE_OP_MASK_LIMIT:
        # One op and one pass instead of three (abs, <=, select): the gradient of a
        # fake quantization passes dy exactly where nudged_min <= x <= nudged_max. With
        # 2 bits in the narrow range its grid is {-c, 0, c} (scale c, zero point 2), so
        # the nudged bounds are exactly -c and c. It multiplies dy by the 0/1 mask where
        # the select chose zero: the same values, bar the sign of a zero (and a NaN
        # where an infinite or NaN dy meets the mask's zero: a step that has diverged).
        return tf.raw_ops.FakeQuantWithMinMaxArgsGradient(
            gradients=dy, inputs=x, min=-clip_value, max=clip_value, num_bits=2,
            narrow_range=True)
    # (a scalar zero: tf.zeros_like would be one more pass over the whole tensor)
    return tf.where(tf.math.abs(x) <= clip_value, dy, tf.zeros((), dy.dtype))


def ste_sign(x: tf.Tensor, clip_value: float | None = 1.0) -> tf.Tensor:
    """Binary sign with the clipped straight-through estimator (see :class:`SteSign`)."""

    @tf.custom_gradient
    def _ste_sign(x):
        return bmath.sign(x), lambda dy: _clipped_gradient(x, dy, clip_value)

    return _ste_sign(x)


def approx_sign(x: tf.Tensor) -> tf.Tensor:
    """Binary sign with Bi-Real Net's piecewise-linear gradient (see :class:`ApproxSign`)."""

    # The custom-gradient function stays inner: at module level tf.custom_gradient
    # returns a `Bind` object, which Keras cannot serialize as an activation.
    @tf.custom_gradient
    def _approx_sign(x):
        def grad(dy):
            # (1 - |x|) * 2 * dy where |x| <= 1, else 0: the maximum is the mask, with
            # the same products as Larq's where(|x| <= 1, ...) and two passes fewer
            return tf.maximum(1 - tf.math.abs(x), 0) * 2 * dy

        return bmath.sign(x), grad

    return _approx_sign(x)


def swish_sign(x: tf.Tensor, beta: float = 5.0) -> tf.Tensor:
    """Binary sign with the SignSwish gradient (see :class:`SwishSign`)."""

    @tf.custom_gradient
    def _swish_sign(x):
        def grad(dy):
            b_x = beta * x
            return dy * beta * (2 - b_x * tf.tanh(b_x * 0.5)) / (1 + tf.cosh(b_x))

        return bmath.sign(x), grad

    return _swish_sign(x)


def ste_heaviside(x: tf.Tensor, clip_value: float | None = 1.0) -> tf.Tensor:
    """Heaviside step with the clipped straight-through estimator (see :class:`SteHeaviside`)."""

    @tf.custom_gradient
    def _ste_heaviside(x):
        return bmath.heaviside(x), lambda dy: _clipped_gradient(x, dy, clip_value)

    return _ste_heaviside(x)


def ste_tern(
    x: tf.Tensor,
    threshold_value: float = 0.05,
    ternary_weight_networks: bool = False,
    clip_value: float | None = 1.0,
) -> tf.Tensor:
    """Ternarization with the clipped straight-through estimator (see :class:`SteTern`)."""

    @tf.custom_gradient
    def _ste_tern(x):
        if ternary_weight_networks:
            # TWN: Delta = 0.7 * mean(|x|) over the whole tensor.
            threshold = 0.7 * tf.reduce_sum(tf.abs(x)) / tf.cast(tf.size(x), x.dtype)
        else:
            threshold = threshold_value
        value = tf.sign(tf.sign(x + threshold) + tf.sign(x - threshold))
        return value, lambda dy: _clipped_gradient(x, dy, clip_value)

    return _ste_tern(x)


def _round_with_identity_grad(x: tf.Tensor, levels: int) -> tf.Tensor:
    """``round(x * levels) / levels`` (half to even, as Larq) with an identity gradient."""

    @tf.custom_gradient
    def _round(x):
        return tf.round(x * levels) / levels, lambda dy: dy

    return _round(x)


# ---------------------------------------------------------------------------------------
# Quantizer layers.
# ---------------------------------------------------------------------------------------


class Quantizer(keras.layers.Layer):
    """Base class of all quantizers: a Keras layer with a ``precision`` (in bits).

    ``precision`` is read by :func:`bnn_cli.models.summary` and by optimizers such as
    :class:`bnn_cli.optimizers.Bop` that treat binary weights differently.
    """

    precision: int | None = None

    def compute_output_shape(self, input_shape):
        return input_shape


class BaseQuantizer(Quantizer):
    """A quantizer with optional training metrics.

    Subclasses implement :meth:`quantize`; ``call`` adds the metrics on top.

    Args:
        metrics: metrics to track on the quantized output; only ``"flip_ratio"`` (the
            share of values that changed since the previous step) is available.
    """

    def __init__(self, *args: Any, metrics: list[str] | None = None, **kwargs: Any):
        self._custom_metrics = list(metrics) if metrics else None
        unknown = set(self._custom_metrics or ()) - {"flip_ratio"}
        if unknown:
            raise ValueError(f"unknown quantizer metric(s) {sorted(unknown)}; "
                             "only 'flip_ratio' is available")
        super().__init__(*args, **kwargs)

    def build(self, input_shape):
        if self._custom_metrics and "flip_ratio" in self._custom_metrics:

            self.flip_ratio = FlipRatio(name=f"flip_ratio/{self.name}")
            self.flip_ratio.build(input_shape)
        super().build(input_shape)

    def quantize(self, inputs: tf.Tensor) -> tf.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def call(self, inputs):
        outputs = self.quantize(inputs)
        if hasattr(self, "flip_ratio"):
            self.add_metric(self.flip_ratio(outputs))
        return outputs

    @property
    def non_trainable_weights(self):
        # The flip-ratio metric's state is not part of the model's weights.
        return []

    def get_config(self):
        return {**super().get_config(), "metrics": self._custom_metrics}


class NoOp(BaseQuantizer):
    r"""Identity quantizer that only marks a variable with a precision.

    Forward: ``q(x) = x``. Pseudo-gradient: ``dq/dx = 1``.

    Use it to tag latent weights as binary for :class:`bnn_cli.optimizers.Bop`
    (``NoOp(precision=1)``) or to track their flip ratio.

    Args:
        precision: the precision (bits) the variable is to be treated as. Required.
    """

    precision = None

    def __init__(self, precision: int, **kwargs: Any):
        self.precision = precision
        super().__init__(**kwargs)

    def quantize(self, inputs):
        return inputs

    def get_config(self):
        return {**super().get_config(), "precision": self.precision}


class SteSign(BaseQuantizer):
    r"""Binary quantizer with the straight-through estimator.

    Forward: ``q(x) = -1 if x < 0 else +1`` (``q(0) = +1``).

    Pseudo-gradient: ``dq/dx = 1 if |x| <= clip_value else 0`` (the boundary passes);
    with ``clip_value=None`` the gradient is never clipped.

    Args:
        clip_value: threshold for clipping gradients, or ``None``.
        metrics: ``["flip_ratio"]`` to track flips.

    Reference: Courbariaux et al., Binarized Neural Networks (arXiv:1602.02830).
    """

    precision = 1

    def __init__(self, clip_value: float | None = 1.0, **kwargs: Any):
        self.clip_value = clip_value
        super().__init__(**kwargs)

    def quantize(self, inputs):
        return ste_sign(inputs, clip_value=self.clip_value)

    def get_config(self):
        return {**super().get_config(), "clip_value": self.clip_value}


class ApproxSign(BaseQuantizer):
    r"""Binary quantizer with Bi-Real Net's approximate sign gradient.

    Forward: ``q(x) = -1 if x < 0 else +1``.

    Pseudo-gradient: ``dq/dx = 2 - 2|x| if |x| <= 1 else 0``.

    Reference: Liu et al., Bi-Real Net (arXiv:1808.00278).
    """

    precision = 1

    def quantize(self, inputs):
        return approx_sign(inputs)


class SteHeaviside(BaseQuantizer):
    r"""Binary quantizer to {0, 1} with the straight-through estimator.

    Forward: ``q(x) = 1 if x > 0 else 0`` (``q(0) = 0``).

    Pseudo-gradient: ``dq/dx = 1 if |x| <= clip_value else 0``.

    Args:
        clip_value: threshold for clipping gradients, or ``None``.
    """

    precision = 1

    def __init__(self, clip_value: float | None = 1.0, **kwargs: Any):
        self.clip_value = clip_value
        super().__init__(**kwargs)

    def quantize(self, inputs):
        return ste_heaviside(inputs, clip_value=self.clip_value)

    def get_config(self):
        return {**super().get_config(), "clip_value": self.clip_value}


class SwishSign(BaseQuantizer):
    r"""Binary quantizer with the SignSwish gradient.

    Forward: ``q(x) = -1 if x < 0 else +1``.

    Pseudo-gradient: ``dq/dx = beta * (2 - beta*x * tanh(beta*x / 2)) / (1 + cosh(beta*x))``.

    Args:
        beta: larger values approximate the sign's derivative more closely.

    Reference: Darabi et al., BNN+ (arXiv:1812.11800).
    """

    precision = 1

    def __init__(self, beta: float = 5.0, **kwargs: Any):
        self.beta = beta
        super().__init__(**kwargs)

    def quantize(self, inputs):
        return swish_sign(inputs, beta=self.beta)

    def get_config(self):
        return {**super().get_config(), "beta": self.beta}


class MagnitudeAwareSign(BaseQuantizer):
    r"""Binary sign scaled by the mean magnitude of each output channel.

    Forward: ``q(x) = a * sign(x)`` with ``a = mean(|x|)`` over every axis but the last
    (one scale per channel); ``a`` is a constant for the gradient.

    Pseudo-gradient: ``dq/dx = a if |x| <= clip_value else 0``.

    Args:
        clip_value: threshold for clipping gradients, or ``None``.

    Reference: Liu et al., Bi-Real Net (arXiv:1808.00278).
    """

    precision = 1

    def __init__(self, clip_value: float | None = 1.0, **kwargs: Any):
        self.clip_value = clip_value
        super().__init__(**kwargs)

    def quantize(self, inputs):
        axes = list(range(len(inputs.shape) - 1))
        scale = tf.stop_gradient(tf.reduce_mean(tf.abs(inputs), axis=axes))
        return scale * ste_sign(inputs, clip_value=self.clip_value)

    def get_config(self):
        return {**super().get_config(), "clip_value": self.clip_value}


class MagnitudeAwareSignUnclipped(BaseQuantizer):
    r"""Binary sign scaled by the mean magnitude of the whole tensor, gradient unclipped.

    Forward: ``q(x) = a * sign(x)`` with ``a = mean(|x|)`` over every element (one scale
    per layer); ``sign(0) = +1``.

    Pseudo-gradient: ``dq/dx = 1`` everywhere (the identity: neither clipped nor scaled
    by ``a``, which is a constant for the gradient).

    The weight quantizer of DoReFa-Net's 1-bit weights as the Larq zoo trains them.

    Reference: Zhou et al., DoReFa-Net (arXiv:1606.06160).
    """

    precision = 1

    def quantize(self, inputs):
        scale = tf.stop_gradient(tf.reduce_mean(tf.abs(inputs)))

        @tf.custom_gradient
        def _scaled_sign(x):
            return bmath.sign(x) * scale, lambda dy: dy

        return _scaled_sign(inputs)


class XnorWeightScale(BaseQuantizer):
    r"""XNOR-Net's weight binarization: sign of the clipped weights times their mean
    magnitude per output channel.

    Forward: ``c = clip(x, -1, 1)``, ``a = mean(|c|)`` over every axis but the last (one
    scale per filter), ``q(x) = a * sign(c)`` (``sign(0) = +1``).

    Pseudo-gradient: the straight-through sign passes the gradient (``|c| <= 1``), and
    ``a`` is differentiated as usual: for weights ``x_j``, ``x_i`` of the same filter
    of ``n`` weights, ``dq_i/dx_j = [|x_j| <= 1] (a [i = j] + sign(c_i) sign(c_j) / n)``;
    zero outside ``[-1, 1]``, where the clip is flat.

    Reference: Rastegari et al., XNOR-Net (arXiv:1603.05279).
    """

    precision = 1

    def quantize(self, inputs):
        clipped = tf.clip_by_value(inputs, -1.0, 1.0)
        axes = list(range(len(inputs.shape) - 1))
        scale = tf.reduce_mean(tf.abs(clipped), axis=axes, keepdims=True)
        return scale * ste_sign(clipped, clip_value=1.0)


class SteTern(BaseQuantizer):
    r"""Ternary quantizer to {-1, 0, +1} with the straight-through estimator.

    Forward: ``q(x) = +1 if x >= D, -1 if x <= -D, else 0`` (``q(+-D) = +-1``), with
    ``D = threshold_value``, or with ``ternary_weight_networks=True`` the TWN threshold
    ``D = 0.7 * mean(|x|)`` over the whole tensor.

    Pseudo-gradient: ``dq/dx = 1 if |x| <= clip_value else 0``.

    Args:
        threshold_value: the threshold ``D``.
        ternary_weight_networks: compute ``D`` from the input as TWN does.
        clip_value: threshold for clipping gradients, or ``None``.

    Reference: Li et al., Ternary Weight Networks (arXiv:1605.04711).
    """

    precision = 2

    def __init__(
        self,
        threshold_value: float = 0.05,
        ternary_weight_networks: bool = False,
        clip_value: float | None = 1.0,
        **kwargs: Any,
    ):
        self.threshold_value = threshold_value
        self.ternary_weight_networks = ternary_weight_networks
        self.clip_value = clip_value
        super().__init__(**kwargs)

    def quantize(self, inputs):
        return ste_tern(
            inputs,
            threshold_value=self.threshold_value,
            ternary_weight_networks=self.ternary_weight_networks,
            clip_value=self.clip_value,
        )

    def get_config(self):
        return {
            **super().get_config(),
            "threshold_value": self.threshold_value,
            "ternary_weight_networks": self.ternary_weight_networks,
            "clip_value": self.clip_value,
        }


class DoReFa(BaseQuantizer):
    r"""k-bit DoReFa-Net quantizer for activations or weights.

    Forward, ``mode="activations"``: ``q(x) = round(n * clip(x, 0, 1)) / n`` with
    ``n = 2^k_bit - 1`` (rounding half to even).

    Forward, ``mode="weights"``: ``t = tanh(x) / (2 max|tanh(x)|) + 0.5``, then
    ``q(x) = 2 round(n t) / n - 1`` (the max is a constant for the gradient).

    Pseudo-gradient: the rounding passes the gradient unchanged; the clip (activations)
    or tanh normalisation (weights) around it are differentiated as usual.

    Args:
        k_bit: number of bits, also the quantizer's ``precision``.
        mode: ``"activations"`` or ``"weights"``.

    Reference: Zhou et al., DoReFa-Net (arXiv:1606.06160).
    """

    precision = None

    def __init__(self, k_bit: int = 2, mode: str = "activations", **kwargs: Any):
        if mode not in ("activations", "weights"):
            raise ValueError(f"invalid DoReFa mode {mode!r}; use 'activations' or 'weights'")
        self.precision = k_bit
        self.mode = mode
        super().__init__(**kwargs)

    def weight_preprocess(self, inputs: tf.Tensor) -> tf.Tensor:
        limited = tf.math.tanh(inputs)
        # The max is a constant for the gradient: otherwise the element that defines it
        # would see d(x/x)/dx computed term by term instead of 0.
        dividend = tf.stop_gradient(tf.math.reduce_max(tf.math.abs(limited)))
        return tf.math.divide_no_nan(limited, 2.0 * dividend) + 0.5

    def quantize(self, inputs):
        if self.mode == "activations":
            inputs = tf.clip_by_value(inputs, 0.0, 1.0)
        else:
            inputs = self.weight_preprocess(inputs)
        outputs = _round_with_identity_grad(inputs, 2**self.precision - 1)
        return 2.0 * outputs - 1.0 if self.mode == "weights" else outputs

    def get_config(self):
        return {**super().get_config(), "k_bit": self.precision, "mode": self.mode}


NoOpQuantizer = NoOp
DoReFaQuantizer = DoReFa

# ---------------------------------------------------------------------------------------
# Registration, lookup and serialization.
# ---------------------------------------------------------------------------------------


def register_quantizer(
    obj: Any = None,
    *,
    name: str | None = None,
    aliases: tuple[str, ...] | list[str] = (),
    precision: int | None = None,
    summary: str | None = None,
    replace: bool = False,
):
    """Register a quantizer class or function so that it can be named by string.

    Works as ``@register_quantizer`` or ``@register_quantizer(name="my_sign",
    precision=1)``. A function's name defaults to its ``__name__``; it receives the
    input tensor and returns the quantized tensor (typically a ``tf.custom_gradient``
    function). Registering a taken name raises unless ``replace=True``.
    """
    if isinstance(obj, str):  # @register_quantizer("my_sign")
        return register_quantizer(name=obj, aliases=aliases, precision=precision,
                                  summary=summary, replace=replace)

    def decorator(target: Any) -> Any:
        is_class = inspect.isclass(target)
        if is_class and not issubclass(target, keras.layers.Layer):
            raise UserError(f"quantizer class {target.__name__} must subclass "
                            "bnn_cli.quantizers.Quantizer (a Keras layer)")
        bits = precision if precision is not None else getattr(target, "precision", None)
        if not is_class and bits is not None:
            target.precision = bits  # read by summaries and optimizers, as Larq does
        return register("quantizer", target, name=name, aliases=aliases, precision=bits,
                        summary=summary, replace=replace)

    return decorator if obj is None else decorator(obj)


def get(identifier: Any) -> QuantizerLike | None:
    """Resolve a quantizer identifier: ``None``, a name, a serialized dict or a callable.

    A name resolves through the registry (name or alias): a class is instantiated with
    its defaults, a function is returned as it is.
    """
    if identifier is None:
        return None
    if isinstance(identifier, str):
        entry = REGISTRY.get("quantizer", identifier)
        if inspect.isclass(entry.obj):
            missing = [p.name for p in entry.params if p.required]
            if missing:
                raise UserError(f"quantizer {identifier!r} needs argument(s) {missing}; "
                                f"write it as {{type: {entry.name}, {missing[0]}: ...}}")
            return entry.obj()
        return entry.obj
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if callable(identifier):
        return identifier
    raise ValueError(f"could not interpret quantizer identifier: {identifier!r}")


def serialize(quantizer: QuantizerLike | None) -> str | dict | None:
    """A JSON-able description of a quantizer, the inverse of :func:`get`."""
    if quantizer is None:
        return None
    if isinstance(quantizer, keras.layers.Layer):
        entry = REGISTRY.find_obj("quantizer", type(quantizer))
        class_name = entry.name if entry else type(quantizer).__name__
        return {"class_name": class_name, "config": quantizer.get_config()}
    entry = REGISTRY.find_obj("quantizer", quantizer)
    if entry is None:
        raise UserError(
            f"quantizer function {getattr(quantizer, '__name__', quantizer)!r} is not "
            "registered, so a model using it cannot be saved; decorate it with "
            "@bnn_cli.quantizers.register_quantizer"
        )
    return entry.name


def deserialize(config: dict | str) -> QuantizerLike | None:
    """Rebuild a quantizer from :func:`serialize`'s output (or Larq's / Keras's)."""
    if not isinstance(config, dict):
        return get(config)
    class_name = config.get("registered_name") or config["class_name"]
    class_name = class_name.split(">")[-1]
    if class_name == NamedActivation.__name__:  # a quantizer used as an activation
        return NamedActivation.from_config(dict(config.get("config") or {}))
    entry = REGISTRY.get("quantizer", class_name)
    if not inspect.isclass(entry.obj):
        return entry.obj
    return entry.obj.from_config(dict(config.get("config") or {}))


for _cls, _aliases in {
    SteSign: ("ste_sign",),
    ApproxSign: ("approx_sign",),
    SwishSign: ("swish_sign",),
    SteHeaviside: ("ste_heaviside",),
    SteTern: ("ste_tern",),
    DoReFa: ("dorefa_quantizer",),
    MagnitudeAwareSign: ("magnitude_aware_sign",),
    MagnitudeAwareSignUnclipped: ("magnitude_aware_sign_unclipped",),
    XnorWeightScale: ("xnor_weight_scale",),
    NoOp: (),
}.items():
    register_quantizer(_cls, aliases=_aliases)


def tanh(x: tf.Tensor) -> tf.Tensor:
    r"""Not a quantizer: the soft stand-in for sign that Real-to-Binary's first stage
    gives binary layers' inputs before they are binarized (Martinez et al., ICLR 2020;
    the Larq zoo's ``RealToBinNetFPFactory`` uses a tanh activation as the input
    quantizer).

    Forward: ``q(x) = tanh(x)``. Gradient: its own, ``1 - tanh(x)^2``.
    """
    return tf.math.tanh(x)


register_quantizer(tanh, name="tanh", summary="tanh(x), real-valued: a soft sign")
