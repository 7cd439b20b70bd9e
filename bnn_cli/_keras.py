"""The one place that imports TensorFlow and Keras.

Every other module does ``from bnn_cli._keras import keras, tf``. Keras is tf-keras
(Keras 2), the Keras that Larq and the Larq Compute Engine converter run on.
"""

import contextlib
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow's start-up chatter (CUDA probing, CPU features) is noise for a CLI user;
# anyone who wants it can set the variable themselves, or BNN_DEBUG=1.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@contextlib.contextmanager
def _quiet_native_stderr():
    """Silence C++ log lines printed while TensorFlow loads (absl ignores the level
    variable before it is initialised). Python exceptions are unaffected."""
    if os.environ.get("BNN_DEBUG") or "tensorflow" in sys.modules:
        yield
        return
    try:
        saved = os.dup(2)
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        yield
        return
    sys.stderr.flush()
    os.dup2(devnull, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


with _quiet_native_stderr():
    import tensorflow as tf
    import tf_keras as keras

    # Probing devices here keeps the "no CUDA driver" line inside the quiet block.
    tf.config.list_physical_devices()


def in_training_call() -> bool:
    """Whether the layer being called runs in training mode (``model(x, training=True)``,
    as ``fit`` calls it). Keras passes ``training`` only to a ``call`` that names it;
    this reads the same flag for layers whose ``call`` signature is Keras's own."""
    from tf_keras.src.engine.base_layer_utils import call_context

    return bool(call_context().training)


__all__ = ["in_training_call", "keras", "tf"]
