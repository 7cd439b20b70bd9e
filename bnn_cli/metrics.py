r"""Training metrics specific to quantized networks (as ``larq.metrics``).

These metrics look at a layer's weights or activations, not at ``y_true``/``y_pred``,
so they are not passed to ``model.compile(metrics=...)``: a quantizer tracks them when
created with ``metrics=["flip_ratio"]`` (e.g. ``SteSign(metrics=["flip_ratio"])``), and
they show up in the training logs as ``flip_ratio/<quantizer name>``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np

from bnn_cli._keras import keras, tf
from bnn_cli.registry import register

__all__ = ["FlipRatio", "get_training_metrics", "metrics_scope"]

AVAILABLE_TRAINING_METRICS = frozenset({"flip_ratio"})


class FlipRatio(keras.metrics.Metric):
    r"""Mean share of values that changed since the previous update.

    With ``v_t`` the (cast) values at update ``t`` and ``N`` their number, each update
    after the first measures ``r_t = #{i : v_t[i] != v_{t-1}[i]} / N``, and the result
    is the mean ``sum_{t>=1} r_t / (T - 1)`` over the ``T`` updates so far (0 before the
    second update: the first one has nothing to compare with).

    Example::

        m = FlipRatio()
        m.update_state((1, 1))  # result: 0
        m.update_state((2, 2))  # result: 1
        m.update_state((1, 2))  # result: 0.75

    ``reset_state()`` restarts the mean but keeps the last values, and the first update
    after it again counts no flips (as in Larq).

    Args:
        values_dtype: the dtype the values are cast to before comparing (binary weights
            fit in ``int8``).
        name: the metric's name.
        dtype: the dtype of the running mean.
    """

    def __init__(self, values_dtype: Any = "int8", name: str = "flip_ratio",
                 dtype: Any = None):
        super().__init__(name=name, dtype=dtype)
        try:
            self.values_dtype = tf.as_dtype(values_dtype)
        except TypeError:
            raise ValueError(f"FlipRatio values_dtype must be a dtype name such as 'int8', "
                             f"got {values_dtype!r}") from None
        # The variable holding the previous values needs their shape, which only the
        # first update (or an explicit build) knows.
        self.built = False

    def build(self, input_shape: Any) -> None:
        shape = tf.TensorShape(input_shape)
        if not shape.is_fully_defined():
            raise ValueError(
                f"{self.name}: FlipRatio tracks the values of a tensor of fixed shape "
                f"(such as a kernel), but got shape {shape}"
            )
        dtype = self.values_dtype
        if dtype not in (tf.bool, tf.float16, tf.float32, tf.float64, tf.int32, tf.int64) \
                and isinstance(tf.distribute.get_strategy(),
                               tf.distribute.MultiWorkerMirroredStrategy):
            # Its workers broadcast each new variable's initial value with a collective
            # operation that takes none of the small integer types.
            dtype = tf.int32
        self._previous_values = self.add_weight(
            "previous_values", shape=shape, dtype=dtype,
            initializer=keras.initializers.Zeros(),
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        self.total = self.add_weight(
            "total", initializer=keras.initializers.Zeros(),
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        self.count = self.add_weight(
            "count", initializer=keras.initializers.Zeros(),
            aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
        )
        self._size = int(np.prod(shape.as_list()))
        self.built = True

    def update_state(self, values: Any, sample_weight: Any = None) -> tf.Operation:
        """Count the flips against the previous values, then remember these ones."""
        values = tf.cast(values, self.values_dtype)
        if not self.built:
            with tf.name_scope(self.name), tf.init_scope():
                self.build(values.shape)
        values = tf.cast(values, self._previous_values.dtype)
        unchanged = tf.math.count_nonzero(tf.equal(self._previous_values, values))
        ratio = 1.0 - tf.cast(unchanged, self.dtype) / tf.cast(self._size, self.dtype)
        # sign(count) is 0 on the first update, which has no previous values to compare.
        total = self.total.assign_add(ratio * tf.sign(self.count))
        with tf.control_dependencies([total]):
            count = self.count.assign_add(1.0)
        with tf.control_dependencies([count]):
            return self._previous_values.assign(values)

    def result(self) -> tf.Tensor:
        return tf.math.divide_no_nan(self.total, self.count - 1.0)

    def reset_state(self) -> None:
        if not self.built:
            return
        keras.backend.batch_set_value([(self.total, 0.0), (self.count, 0.0)])

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "values_dtype": self.values_dtype.name}


# ---------------------------------------------------------------------------------------
# Scope of training metrics.
# ---------------------------------------------------------------------------------------

_training_metrics: set[str] = set()


@contextlib.contextmanager
def metrics_scope(metrics: Iterable[str] = ()) -> Iterator[set[str]]:
    """Add training metrics (only ``"flip_ratio"``) to the scope while inside it.

    As ``larq.context.metrics_scope``: the set of names it yields is what
    :func:`get_training_metrics` returns; kernel quantizers that consult it while the
    scope is active track these metrics. Nested scopes add up; leaving one restores the
    set as it was.
    """
    metrics = list(metrics)
    unknown = sorted(set(metrics) - AVAILABLE_TRAINING_METRICS)
    if unknown:
        raise ValueError(f"unknown training metric(s) {unknown}; available: "
                         f"{sorted(AVAILABLE_TRAINING_METRICS)}")
    backup = set(_training_metrics)
    _training_metrics.update(metrics)
    try:
        yield _training_metrics
    finally:
        _training_metrics.clear()
        _training_metrics.update(backup)


def get_training_metrics() -> set[str]:
    """The training metrics of the current :func:`metrics_scope` (a live set)."""
    return _training_metrics


register("metric", FlipRatio, aliases=("flip_ratio",))
