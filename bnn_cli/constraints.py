r"""Constraints applied to weights after each optimizer step (as ``larq.constraints``).

The quantized layers take the Keras constraint arguments (``kernel_constraint``,
``depthwise_constraint`` ...). A binary kernel quantizer with a clipped straight-through
estimator passes no gradient where ``|w| > 1``, so its latent weights are usually kept in
``[-1, 1]`` with :class:`WeightClip`::

    QuantDense(64, kernel_quantizer="ste_sign", kernel_constraint="weight_clip")
    QuantDense(64, kernel_quantizer="ste_sign", kernel_constraint=WeightClip(2.0))
"""

from __future__ import annotations

import numbers
from typing import Any

from bnn_cli._keras import keras, tf
from bnn_cli.registry import register

__all__ = ["WeightClip", "weight_clip"]

class WeightClip(keras.constraints.Constraint):
    r"""Clip every weight to [-clip_value, clip_value].

    ``w <- min(max(w, -clip_value), clip_value)``, applied after each optimizer step.

    Args:
        clip_value: the bound ``c > 0`` of the interval ``[-c, c]``.
    """

    def __init__(self, clip_value: float = 1):
        # A negative bound would only fail later, inside the training step, with an
        # error about tf.clip_by_value's arguments.
        if isinstance(clip_value, bool) or not isinstance(clip_value, numbers.Real):
            raise ValueError(f"WeightClip clip_value must be a number, got {clip_value!r}")
        if not clip_value > 0:
            raise ValueError(f"WeightClip clip_value must be > 0, got {clip_value!r}")
        self.clip_value = clip_value

    def __call__(self, w: tf.Tensor) -> tf.Tensor:
        # One op where tf.clip_by_value runs two (minimum, then maximum): it runs on
        # every clipped kernel after every step, so the op count shows in small nets.
        bound = tf.cast(self.clip_value, w.dtype)
        return tf.raw_ops.ClipByValue(t=w, clip_value_min=-bound, clip_value_max=bound)

    def get_config(self) -> dict[str, Any]:
        return {"clip_value": self.clip_value}


weight_clip = WeightClip  # Larq's lowercase spelling; the name resolves to WeightClip

register("constraint", WeightClip, aliases=("weight_clip",))
