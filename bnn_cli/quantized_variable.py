r"""A variable that reads as its quantized value inside ``quantized_scope(True)``
(as ``larq.quantized_variable``).

:class:`QuantizedVariable` wraps a latent (full-precision) ``tf.Variable`` and a
quantizer ``q``. Every read (``value()``, ``read_value()``, ``numpy()``, tensor
conversion, arithmetic) gives ``q(w)`` while :func:`bnn_cli.context.should_quantize` is
true and ``w`` otherwise; every write (``assign``, ``scatter_*``) goes to the latent
variable, and checkpoints and SavedModels hold the latent variable, so a checkpoint of a
``QuantizedVariable`` restores into a plain variable and the other way round. Inside the
scope, gradients flow through ``q``'s pseudo-gradient to the latent variable.

bnn_cli's layers keep their latent weights as plain variables and quantize them in
``call``; inside ``quantized_scope(True)`` they hand out ``QuantizedVariable`` views of
their quantized weights (``layer.weights``, ``get_weights``, saving), so
``model.get_weights()`` gives binarized kernels as Larq's does. The class can also be
used directly::

    v = QuantizedVariable(tf.Variable([0.3, -0.2]), quantizer=SteSign())
    v.numpy()                          # [0.3, -0.2]
    with quantized_scope(True):
        v.numpy()                      # [1., -1.]
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from bnn_cli import context
from bnn_cli._keras import tf

__all__ = ["QuantizedVariable", "QuantizedVariableSpec"]

_UNSET: Any = object()
"""``op`` not given: a ``QuantizedVariable``'s ``op`` is then its latent variable's."""


class QuantizedVariableSpec(tf.types.experimental.TraceType):
    """The ``tf.function`` trace type of one :class:`QuantizedVariable`.

    A function traced with a ``QuantizedVariable`` argument uses that very variable
    (quantizer included) in its graph, so two specs are equal exactly when they describe
    the same ``QuantizedVariable`` object: calling again with it reuses the trace, a
    different one (even around the same latent variable) traces anew.
    """

    def __init__(self, value: QuantizedVariable):
        self.latent_variable = value  # (Larq's name: the QuantizedVariable it describes)

    def is_subtype_of(self, other: Any) -> bool:
        return self == other

    def most_specific_common_supertype(self, others: Any) -> QuantizedVariableSpec | None:
        return self if all(self == other for other in others) else None

    def placeholder_value(self, placeholder_context: Any = None) -> QuantizedVariable:
        # The graph captures the variable itself (as for a plain variable argument).
        return self.latent_variable

    def _cast(self, value: Any, casting_context: Any) -> Any:
        return value

    def _to_tensors(self, value: Any) -> list:
        return []

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, QuantizedVariableSpec)
                and other.latent_variable is self.latent_variable)

    def __hash__(self) -> int:
        return id(self.latent_variable)


class QuantizedVariable(tf.Variable):
    """A latent variable that reads as ``quantizer(latent)`` inside ``quantized_scope(True)``.

    Args:
        variable: the latent floating-point variable (a ``tf.Variable``) to wrap.
        quantizer: a callable applied to the latent value when quantizing, or ``None``
            (the variable then always reads as the latent value).
        precision: the precision in bits the variable stands for; ``None`` takes the
            quantizer's ``precision`` attribute (if any).
        op: the operation this variable comes from (set by ``assign``); defaults to the
            latent variable's.

    Raises:
        ValueError: ``variable`` is not a variable, ``quantizer`` neither callable nor
            ``None``, or ``precision`` neither an ``int`` nor ``None`` (as Larq).
    """

    def __init__(self, variable: tf.Variable, quantizer: Callable[[Any], Any] | None = None,
                 precision: int | None = None, op: Any = _UNSET):
        if not isinstance(variable, tf.Variable):
            raise ValueError(f"`variable` must be a tf.Variable (a resource variable), "
                             f"got {type(variable)}")
        if quantizer is not None and not callable(quantizer):
            raise ValueError(f"`quantizer` must be callable or None, got {type(quantizer)}")
        if precision is not None and type(precision) is not int:
            raise ValueError(f"`precision` must be an int or None, got {type(precision)}")
        self.latent_variable = variable
        self.quantizer = quantizer
        self.precision = precision or getattr(quantizer, "precision", None)
        self._op = op

    @classmethod
    def from_variable(cls, variable: tf.Variable,
                      quantizer: Callable[[Any], Any] | None = None,
                      precision: int | None = None, op: Any = _UNSET) -> QuantizedVariable:
        """Wrap ``variable``; a distributed variable (``MirroredVariable`` ...) gets a
        class deriving from both this one and its own, so that it remains an instance of
        its class, which distribution strategies check."""
        if not _is_distributed(variable):
            return cls(variable, quantizer, precision, op=op)
        return _distributed_class(cls, type(variable))(variable, quantizer, precision, op=op)

    # -- reads: quantized inside quantized_scope(True) ---------------------------------

    def _quantize(self, value: Any) -> Any:
        if self.quantizer is not None and context.should_quantize():
            return self.quantizer(value)
        return value

    def value(self):
        return self._quantize(self.latent_variable.value())

    def read_value(self):
        return self._quantize(self.latent_variable.read_value())

    def numpy(self):
        return self.read_value().numpy()

    def sparse_read(self, *args, **kwargs):
        return self._quantize(self.latent_variable.sparse_read(*args, **kwargs))

    def gather_nd(self, *args, **kwargs):
        return self._quantize(self.latent_variable.gather_nd(*args, **kwargs))

    def eval(self, session=None):
        return self._quantize(self.latent_variable).eval(session=session)

    def initialized_value(self):
        return self._quantize(self.latent_variable.initialized_value())

    @property
    def initial_value(self):
        return self._quantize(self.latent_variable.initial_value)

    def _dense_var_to_tensor(self, dtype=None, name=None, as_ref=False):
        return self._quantize(
            self.latent_variable._dense_var_to_tensor(dtype=dtype, name=name, as_ref=as_ref))

    def __tf_tensor__(self, dtype=None, name=None):
        return self._dense_var_to_tensor(dtype=dtype, name=name)

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.numpy(), dtype=dtype)

    def is_tensor_like(self):
        """Makes ``tf.is_tensor`` true, as for a plain variable (TensorFlow's protocol)."""

    def _as_graph_element(self):
        if self.quantizer is not None and context.should_quantize():
            return self.quantizer(self.latent_variable)
        element = self.latent_variable._as_graph_element()
        return self._op if element is None else element

    def __tf_tracing_type__(self, tracing_context):
        return QuantizedVariableSpec(self)

    # -- writes: to the latent variable ------------------------------------------------

    def _assigned(self, update: Callable[..., Any], value: Any, use_locking: Any,
                  name: Any, read_value: bool) -> Any:
        if tf.compat.v1.executing_eagerly_outside_functions():
            assign_op = update(value, use_locking, name, False)
            return self.from_variable(self.latent_variable, self.quantizer, self.precision,
                                      op=assign_op) if read_value else assign_op
        result = update(value, use_locking, name, read_value)
        if read_value and isinstance(result, tf.Variable):
            return self.from_variable(result, self.quantizer, self.precision)
        return result

    def assign(self, value, use_locking=None, name=None, read_value=True):
        return self._assigned(self.latent_variable.assign, value, use_locking, name,
                              read_value)

    def assign_add(self, delta, use_locking=None, name=None, read_value=True):
        return self._assigned(self.latent_variable.assign_add, delta, use_locking, name,
                              read_value)

    def assign_sub(self, delta, use_locking=None, name=None, read_value=True):
        return self._assigned(self.latent_variable.assign_sub, delta, use_locking, name,
                              read_value)

    def _updated(self, method: str, *args: Any, **kwargs: Any) -> Any:
        result = getattr(self.latent_variable, method)(*args, **kwargs)
        if tf.compat.v1.executing_eagerly_outside_functions():
            return self
        if isinstance(result, tf.Variable):
            return self.from_variable(result, self.quantizer, self.precision)
        return result

    # -- everything else: the latent variable's -----------------------------------------

    def __getattr__(self, name: str) -> Any:
        if name == "latent_variable":  # not set yet: no recursion through ourselves
            raise AttributeError(name)
        return getattr(self.latent_variable, name)

    def _should_act_as_resource_variable(self):
        """Marks the class as a resource variable for TensorFlow's checks."""

    @property
    def op(self):
        return self.latent_variable.op if self._op is _UNSET else self._op

    def _map_resources(self, *args):
        objects, resources = self.latent_variable._map_resources(*args)
        objects[self] = objects[self.latent_variable]
        return objects, resources

    def _export_to_saved_model_graph(self, object_map, tensor_map, options, **kwargs):
        resources = self.latent_variable._export_to_saved_model_graph(
            object_map, tensor_map, options, **kwargs)
        object_map[self] = object_map[self.latent_variable]
        return resources

    def __repr__(self) -> str:
        text = f"<{type(self).__name__} '{self.name}' shape={self.shape} dtype={self.dtype.name}"
        if self.quantizer is not None:
            quantizer = getattr(self.quantizer, "__name__", None)
            text += f" quantizer={quantizer or type(self.quantizer).__name__}"
        if self.precision is not None:
            text += f" precision={self.precision}"
        if tf.executing_eagerly() and not self.latent_variable._in_graph_mode:
            value = np.array_repr(self.read_value().numpy())
            text += f" numpy={chr(10) if chr(10) in value else ''}{value}"  # as tf.Variable
        return text + ">"


def _forward_method(name: str) -> Callable[..., Any]:
    def method(self, *args, **kwargs):
        return getattr(self.latent_variable, name)(*args, **kwargs)

    method.__name__ = name
    return method


def _forward_property(name: str, settable: bool = False) -> property:
    def fget(self):
        return getattr(self.latent_variable, name)

    def fset(self, value):
        setattr(self.latent_variable, name, value)

    return property(fget, fset if settable else None)


def _update_method(name: str) -> Callable[..., Any]:
    def method(self, *args, **kwargs):
        return self._updated(name, *args, **kwargs)

    method.__name__ = name
    return method


# tf.Variable defines these (mostly raising NotImplementedError), so __getattr__ never
# sees them: they are forwarded explicitly. `ref()` stays tf.Variable's own, so that a
# QuantizedVariable and its latent variable are different keys.
for _name in ("set_shape", "count_up_to", "load", "get_shape", "to_proto", "from_proto",
              "_gather_saveables_for_checkpoint"):
    setattr(QuantizedVariable, _name, _forward_method(_name))
for _name in ("trainable", "synchronization", "aggregation", "constraint", "dtype", "name",
              "_shared_name", "initializer", "device", "graph", "shape"):
    setattr(QuantizedVariable, _name, _forward_property(_name))
for _name in ("_handle_name", "_initializer_op"):  # SavedModel loading sets these
    setattr(QuantizedVariable, _name, _forward_property(_name, settable=True))
for _name in ("scatter_sub", "scatter_add", "scatter_max", "scatter_min", "scatter_mul",
              "scatter_div", "scatter_update", "batch_scatter_update", "scatter_nd_sub",
              "scatter_nd_add", "scatter_nd_update"):
    setattr(QuantizedVariable, _name, _update_method(_name))


def _is_distributed(variable: tf.Variable) -> bool:
    return (isinstance(variable, tf.distribute.DistributedValues)
            or type(variable).__name__ == "AggregatingVariable")


@functools.cache
def _distributed_class(cls: type, variable_class: type) -> type:
    def get(self, *args, **kwargs):
        return self._quantize(self.latent_variable.get(*args, **kwargs))

    return type(f"Quantized{variable_class.__name__}", (cls, variable_class), {
        "__doc__": f"A {cls.__name__} that is also a {variable_class.__name__}.",
        "__module__": __name__,
        "get": get,
    })


QuantizedVariable._OverloadAllOperators()
tf.register_tensor_conversion_function(
    QuantizedVariable,
    lambda var, dtype=None, name=None, as_ref=False: var._dense_var_to_tensor(
        dtype=dtype, name=name, as_ref=as_ref),
)
