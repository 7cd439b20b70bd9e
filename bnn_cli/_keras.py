"""The one place that imports TensorFlow and Keras.

Every other module does ``from bnn_cli._keras import keras, tf``. Keras is tf-keras
(Keras 2), the Keras that Larq and the Larq Compute Engine converter run on.
"""

import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's C++ start-up chatter (CUDA probing, CPU features) is noise for a CLI
# user; anyone who wants it can still set the variable themselves.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
import tf_keras as keras  # noqa: E402

__all__ = ["keras", "tf"]
