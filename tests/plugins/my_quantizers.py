"""A plugin as a user writes one: a custom quantizer and a custom layer, by string."""

import tensorflow as tf

from bnn_cli._keras import keras
from bnn_cli.layers import register_layer
from bnn_cli.quantizers import register_quantizer


@register_quantizer(precision=1)
@tf.custom_gradient
def identity_sign(x):
    """Sign with an identity (unclipped) pseudo-gradient."""
    return tf.sign(tf.sign(x) + 0.1), lambda dy: dy


@register_layer
class Scale(keras.layers.Layer):
    """Multiplies its input by a constant factor."""

    def __init__(self, factor: float = 2.0, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
