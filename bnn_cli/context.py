"""Context managers for process-wide behaviour of quantized models (as ``larq.context``).

- :func:`quantized_scope`: inside ``quantized_scope(True)`` the latent weights of
  quantized layers read as their quantized values wherever weights are *read out* of a
  model: ``model.get_weights()``, ``layer.weights``, ``model.save(...)`` to ``.h5`` or
  ``.keras`` and ``model.save_weights(...)`` to ``.h5``. Larq's documented way to save
  binarized weights works unchanged::

      with bnn_cli.context.quantized_scope(True):
          model.save("binary_model.h5")     # +-1 kernels
          weights = model.get_weights()     # +-1 kernels

  Training, ``predict`` and TensorFlow checkpoints (SavedModel, ``tf.train.Checkpoint``)
  are unaffected: the forward pass always quantizes, and checkpoints always hold the
  latent weights (as in Larq).
- :func:`metrics_scope` / :func:`get_training_metrics`: the training metrics (only
  ``"flip_ratio"``) that kernel quantizers of layers built inside the scope track. They
  are :mod:`bnn_cli.metrics`'s own, re-exported here under Larq's module.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator

from bnn_cli.metrics import get_training_metrics, metrics_scope

__all__ = ["get_training_metrics", "metrics_scope", "quantized_scope", "should_quantize"]

_state = threading.local()


@contextlib.contextmanager
def quantized_scope(quantize: bool) -> Iterator[bool]:
    """Make quantized variables read as their quantized (``True``) or latent (``False``)
    value while inside the block; yields ``quantize``.

    The flag is per thread; nested scopes override the outer one, and leaving a scope
    (also by an exception) restores the flag as it was.
    """
    saved = should_quantize()
    _state.quantize = quantize
    try:
        yield quantize
    finally:
        _state.quantize = saved


def should_quantize() -> bool:
    """The flag of the innermost active :func:`quantized_scope` (``False`` outside any)."""
    return getattr(_state, "quantize", False)
