"""Math operations specific to extremely quantized networks (as ``larq.math``)."""

from bnn_cli._keras import tf


def sign(x: tf.Tensor) -> tf.Tensor:
    """Binary sign that is never zero: ``-1 if x < 0 else +1`` (so ``sign(0) = +1``)."""
    # tf.sign(0) == 0; shifting by 0.1 before the outer sign maps 0 to +1 and leaves
    # every other value's sign unchanged.
    return tf.sign(tf.sign(x) + 0.1)


def heaviside(x: tf.Tensor) -> tf.Tensor:
    """Heaviside step with outputs 0 and 1: ``1 if x > 0 else 0`` (so ``heaviside(0) = 0``)."""
    return tf.sign(tf.nn.relu(x))
