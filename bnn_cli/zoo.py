r"""Components of published BNN architectures (the Larq zoo's in ``configs/zoo/``, and
ReActNet's) that no Keras layer or YAML block can express.

Everything else those networks need is written in their configs as YAML blocks (QuickNet's
residual and transition blocks, MeliusNet's dense and improvement blocks,
Real-to-Binary's data-driven scaling) or is a quantizer in :mod:`bnn_cli.quantizers`
(XNOR-Net's ``xnor_weight_scale``, DoReFa-Net's ``magnitude_aware_sign_unclipped``).

- :class:`BlurPool`: the fixed anti-aliasing filter of QuickNet's transition blocks, as
  the initializer of a non-trainable ``DepthwiseConv2D``;
- :class:`AddToLastChannels`: MeliusNet's improvement merge, ``x + [0, ..., 0, w]``
  (the zoo writes it as a ``Lambda``, which a config may not name);
- :class:`LearnableBias`: ReActNet's learned per-channel shift, which makes RSign
  (``sign(x - b)``) and RPReLU (``PReLU(x - g) + z``) out of Keras's ``PReLU`` and a
  quantizer.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bnn_cli._keras import keras, tf
from bnn_cli.layers import register_layer
from bnn_cli.registry import register

__all__ = ["AddToLastChannels", "BlurPool", "LearnableBias"]

_BINOMIAL = {2: (1, 1), 3: (1, 2, 1), 5: (1, 4, 6, 4, 1)}
"""Rows of Pascal's triangle: the 1D blur filters of each supported size."""


class BlurPool(keras.initializers.Initializer):
    r"""A normalized binomial blur for a depthwise kernel (Zhang, "Making Convolutional
    Networks Shift-Invariant Again", arXiv:1904.11486).

    For a ``(k, k, channels, 1)`` depthwise kernel with ``k`` in 2, 3 or 5:
    ``w[i, j, c] = b_i b_j / (sum b)^2`` with ``b`` the binomial row of size ``k``
    (``[1, 2, 1]`` for 3), the same for every channel. QuickNet freezes it
    (``trainable: false``): a strided ``DepthwiseConv2D`` with it is a blur-pool.
    """

    def __call__(self, shape: Any, dtype: Any = None, **kwargs: Any) -> tf.Tensor:
        size, channels = int(shape[0]), int(shape[2])
        if size not in _BINOMIAL or int(shape[1]) != size:
            raise ValueError(f"BlurPool needs a square kernel of size 2, 3 or 5, got "
                             f"{tuple(shape)}")
        row = np.array(_BINOMIAL[size], dtype="float64")
        kernel = np.outer(row, row) / row.sum() ** 2
        kernel = np.repeat(kernel[:, :, None], channels, axis=-1)
        return tf.constant(np.reshape(kernel, shape), dtype=dtype or tf.float32)

    def get_config(self) -> dict[str, Any]:
        return {}


class AddToLastChannels(keras.layers.Layer):
    r"""Add the second input into the last channels of the first.

    ``y = x + pad(w)``, where ``pad`` puts ``C_x - C_w`` zero channels before ``w``: the
    first ``C_x - C_w`` channels of ``x`` pass unchanged, the last ``C_w`` get ``w``
    added. MeliusNet's improvement block uses it to refine the channels the preceding
    dense block appended (Bethge et al., MeliusNet, arXiv:2001.05936).

    No weights. Takes ``[x, w]`` with the same batch and spatial shape and
    ``C_w <= C_x``.
    """

    def build(self, input_shape: Any) -> None:
        x_shape, w_shape = (tf.TensorShape(s) for s in input_shape)
        if w_shape[-1] is not None and x_shape[-1] is not None \
                and w_shape[-1] > x_shape[-1]:
            raise ValueError(f"the second input has {w_shape[-1]} channels, more than the "
                             f"first's {x_shape[-1]}")
        super().build(input_shape)

    def call(self, inputs: list[tf.Tensor]) -> tf.Tensor:
        x, w = inputs
        extra = tf.shape(x)[-1] - tf.shape(w)[-1]
        rank = len(x.shape)
        paddings = [[0, 0]] * (rank - 1) + [[extra, 0]]
        return x + tf.pad(w, paddings)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape[0]


class LearnableBias(keras.layers.Layer):
    r"""Add a learned bias to each channel: ``y[..., c] = x[..., c] + b[c]``.

    ReActNet (Liu et al., arXiv:2003.03488) moves each channel's distribution before
    the places where its shape matters: before a binary convolution's sign, so that the
    threshold is learned (RSign, ``sign(x + b)``), and around a ``PReLU`` (RPReLU,
    ``PReLU(x + b1) + b2``), so that the bend is learned too. Cheap: one add per value,
    ``C`` weights (``bias_initializer``, zeros by default: an identity at the start).
    """

    def __init__(self, bias_initializer: Any = "zeros", **kwargs: Any):
        super().__init__(**kwargs)
        self.bias_initializer = keras.initializers.get(bias_initializer)

    def build(self, input_shape: Any) -> None:
        channels = tf.TensorShape(input_shape)[-1]
        if channels is None:
            raise ValueError("LearnableBias needs a known number of channels (last axis)")
        self.bias = self.add_weight("bias", shape=(int(channels),),
                                    initializer=self.bias_initializer, trainable=True)
        super().build(input_shape)

    def call(self, inputs: tf.Tensor) -> tf.Tensor:
        return inputs + tf.cast(self.bias, inputs.dtype)

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(),
                "bias_initializer": keras.initializers.serialize(self.bias_initializer)}


register("initializer", BlurPool, aliases=("blurpool",))
register_layer(AddToLastChannels)  # (registry.register, with its Keras arguments)
register_layer(LearnableBias)
