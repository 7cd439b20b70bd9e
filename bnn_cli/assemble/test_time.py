"""Test-time augmentation (``data.test_time_augmentation``): a model scored on the mean of
its outputs for each image and for that image mirrored, as airbench's CIFAR-10 speedruns
score theirs. Training is untouched; validation (so the checkpoint chosen), the test
evaluation, ``bnn eval`` and ``bnn predict`` all score the same way.

It costs a second forward pass per scored image, and nothing in training. A model
exported for deployment is the single pass: ``bnn predict`` averages an exported file's
two passes (:func:`averaged`), and so must any other caller.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bnn_cli._keras import keras, tf


def mirrored_mean(predict: Callable[[Any], Any], x: Any) -> Any:
    """The mean of ``predict`` on ``x`` and on ``x`` mirrored left to right (``x`` is
    NHWC, the width axis 2; a tensor or a NumPy array)."""
    return (predict(x) + predict(x[:, :, ::-1])) / 2


class TestTimeAugmented(keras.Model):
    """Trains ``model`` as it is; validates, evaluates and predicts with
    :func:`mirrored_mean`. It holds no weights of its own: a checkpoint of ``model`` is
    one of this."""

    __test__ = False  # (not a pytest test class, whatever its name says)

    def __init__(self, model: keras.Model, **kwargs: Any) -> None:
        super().__init__(name=f"{model.name}_tta", **kwargs)
        self.inner = model

    def call(self, x: Any, training: bool | None = False) -> tf.Tensor:
        if training:
            return self.inner(x, training=True)
        return mirrored_mean(lambda t: self.inner(t, training=False), x)


def augmented(model: keras.Model, kind: str | None) -> keras.Model | None:
    """The model that scores ``model`` with ``kind`` of test-time augmentation, or None
    without it."""
    return None if kind is None else TestTimeAugmented(model)  # (kind: horizontal_flip)


def averaged(predict: Callable[[np.ndarray], np.ndarray],
             kind: str | None) -> Callable[[np.ndarray], np.ndarray]:
    """``predict`` (an exported file's, on NHWC arrays), scored as ``kind`` says."""
    return predict if kind is None else lambda x: mirrored_mean(predict, x)
