r"""Optimizers for networks with binary weights (as ``larq.optimizers``).

A BNN has binary weights (trained by :class:`Bop`, or as latent weights by any Keras
optimizer) and real-valued ones (batch norm, first and last layers). :class:`CaseOptimizer`
trains each variable with the optimizer whose predicate claims it, like ``tf.case``::

    optimizer = CaseOptimizer(
        (Bop.is_binary_variable, Bop(threshold=1e-6, gamma=1e-3)),
        default_optimizer=keras.optimizers.Adam(0.01),  # everything else
    )
    model.compile(optimizer=optimizer, loss="categorical_crossentropy")

Both are tf-keras 2.21 optimizers of the current kind (``keras.optimizers.Optimizer``,
the kind ``keras.optimizers.Adam`` is), so the state of every optimizer is saved with
the model in the ``.keras`` and ``.h5`` formats. Larq bases them on the legacy
``keras.optimizers.legacy.Optimizer`` instead; :class:`CaseOptimizer` accepts optimizers
of either kind, so Larq-style ``keras.optimizers.legacy.Adam`` works too.
"""

from __future__ import annotations

import collections
import numbers
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from bnn_cli import math as bmath
from bnn_cli._keras import keras, tf
from bnn_cli.registry import PACKAGE, keras_scope, register

__all__ = ["Bop", "CaseOptimizer"]


Optimizer = keras.optimizers.Optimizer
LegacyOptimizer = keras.optimizers.legacy.Optimizer
Schedule = keras.optimizers.schedules.LearningRateSchedule
Predicate = Callable[[tf.Variable], bool]


class _CallableList(list):
    """A list that also answers ``optimizer.variables()`` (the legacy spelling)."""

    def __call__(self) -> list:
        return self


# ---------------------------------------------------------------------------------------
# Bop
# ---------------------------------------------------------------------------------------


class Bop(Optimizer):
    r"""Binary optimizer (Bop): flip a binary weight when its gradient signal is strong.

    Bop keeps no latent weights, only an exponential moving average ``m`` of each binary
    weight's gradient ``g``, and flips the weight when ``m`` pushes against it::

        m_t = m_{t-1} + gamma * (g_t - m_{t-1})
        w_t = -w_{t-1}  if w_{t-1} * m_t > threshold  else  w_{t-1}

    (``w_t = sign(-sign(w_{t-1} m_t - threshold) w_{t-1})`` with ``sign(0) = +1``, as in
    Larq). ``gamma`` plays the part of a learning rate: larger values converge faster but
    train more noisily. ``threshold`` and ``gamma`` may be floats or
    ``keras.optimizers.schedules.LearningRateSchedule`` objects (evaluated at the
    optimizer's iteration count).

    Bop is meant for binary variables only; use it through :class:`CaseOptimizer` with
    :meth:`Bop.is_binary_variable`, which claims the variables whose quantizer has
    ``precision == 1`` (e.g. ``kernel_quantizer=NoOp(precision=1)``).

    Args:
        threshold: how strong the average gradient must be to flip a weight.
        gamma: the adaptivity rate of the moving average.
        name: the optimizer's name.
        **kwargs: other ``keras.optimizers.Optimizer`` arguments (``clipnorm``,
            ``clipvalue``, ``global_clipnorm``, ``jit_compile`` ...).

    Reference: Helwegen et al., Latent Weights Do Not Exist: Rethinking Binarized Neural
    Network Optimization (NeurIPS 2019, arXiv:1906.02107).
    """

    def __init__(self, threshold: float | Schedule = 1e-8, gamma: float | Schedule = 1e-4,
                 name: str = "Bop", **kwargs: Any):
        # Weight decay needs a learning rate, which Bop does not have (and decaying a
        # +-1 weight towards 0 has no meaning); Keras would fail inside the train step.
        if kwargs.get("weight_decay"):
            raise ValueError("Bop does not support weight_decay (binary weights have no "
                             "magnitude to decay)")
        kwargs["weight_decay"] = None
        super().__init__(name=name, **kwargs)
        # Keras's update loop reads `_learning_rate` (to update schedules); Bop has none.
        self._learning_rate = None
        self._threshold = self._build_hyperparameter("threshold", threshold)
        self._gamma = self._build_hyperparameter("gamma", gamma)

    def _build_hyperparameter(self, name: str, value: Any) -> tf.Variable | Schedule:
        if isinstance(value, Schedule):
            return value
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or value < 0:
            raise ValueError(f"Bop {name} must be a number >= 0 or a LearningRateSchedule, "
                             f"got {value!r}")
        # A variable, so that HyperparameterScheduler can change it during training.
        with tf.init_scope():
            return tf.Variable(value, name=name, dtype=keras.backend.floatx(), trainable=False)

    @property
    def threshold(self) -> tf.Variable | Schedule:
        return self._threshold

    @threshold.setter
    def threshold(self, value: float) -> None:
        self._set_hyperparameter("threshold", value)

    @property
    def gamma(self) -> tf.Variable | Schedule:
        return self._gamma

    @gamma.setter
    def gamma(self, value: float) -> None:
        self._set_hyperparameter("gamma", value)

    def _set_hyperparameter(self, name: str, value: float) -> None:
        current = getattr(self, f"_{name}")
        if isinstance(current, Schedule):
            raise TypeError(f"Bop {name} is a schedule and cannot be set")
        current.assign(value)

    def _current(self, hyperparameter: tf.Variable | Schedule, dtype: tf.DType) -> tf.Tensor:
        if isinstance(hyperparameter, Schedule):
            return tf.cast(hyperparameter(self.iterations), dtype)
        return tf.cast(hyperparameter, dtype)

    def build(self, var_list: Sequence[tf.Variable]) -> None:
        """Create the gradient moving average ``m`` (zeros) of every variable."""
        super().build(var_list)
        if getattr(self, "_built", False):
            return
        self._built = True
        self._momentums = [self.add_variable_from_reference(var, "m") for var in var_list]

    def update_step(self, gradient: tf.Tensor, variable: tf.Variable) -> None:
        if isinstance(gradient, tf.IndexedSlices):
            gradient = tf.convert_to_tensor(gradient)
        gamma = self._current(self._gamma, variable.dtype)
        threshold = self._current(self._threshold, variable.dtype)
        m = self._momentums[self._index_dict[self._var_key(variable)]]
        m_t = m.assign_add(gamma * (gradient - m))
        # The exact expression of Larq's Bop, so that ties (w * m == threshold) and
        # w == 0 resolve the same way: both give +1.
        variable.assign(bmath.sign(-tf.sign(variable * m_t - threshold) * variable))

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "threshold": self._serialize_hyperparameter(self._threshold),
            "gamma": self._serialize_hyperparameter(self._gamma),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> Bop:
        config = dict(config)
        for name in ("threshold", "gamma"):
            if isinstance(config.get(name), dict):
                config[name] = keras.optimizers.schedules.deserialize(
                    config[name], custom_objects=custom_objects)
        # Larq's (legacy) Bop may write a zero `decay`, which this kind of optimizer
        # refuses as an argument.
        if not config.get("decay"):
            config.pop("decay", None)
        return cls(**config)

    @staticmethod
    def is_binary_variable(var: tf.Variable) -> bool:
        """True for variables marked as binary: ``getattr(var, "precision", 32) == 1``.

        The quantized layers set ``var.precision`` from their quantizer's precision
        (``NoOp(precision=1)``, ``SteSign()`` ...). A predicate for :class:`CaseOptimizer`.
        """
        return getattr(var, "precision", 32) == 1


# ---------------------------------------------------------------------------------------
# CaseOptimizer
# ---------------------------------------------------------------------------------------


def _unknown_predicate(var: tf.Variable) -> bool:
    """Stands in for a predicate that a saved config could not carry."""
    return False


def _is_legacy(optimizer: Any) -> bool:
    return isinstance(optimizer, LegacyOptimizer)


def _optimizer_variables(optimizer: Any) -> list[tf.Variable]:
    return list(optimizer.weights if _is_legacy(optimizer) else optimizer.variables)


def _serialize_predicate(predicate: Predicate) -> str | None:
    """The registered name of a predicate that Keras can find again, else None."""
    name = keras.saving.get_registered_name(predicate)
    return name if keras.saving.get_registered_object(name) is predicate else None


class CaseOptimizer(Optimizer):
    r"""Train each variable with the optimizer whose predicate claims it.

    Given pairs ``(predicate_i, optimizer_i)``, a variable ``v`` is trained by
    ``optimizer_i`` if ``predicate_i(v)`` is true, by ``default_optimizer`` if no
    predicate claims it, and not at all if neither exists (with a warning). A variable
    claimed by two predicates, or a pair that claims no variable, is an error. The
    assignment is made once, for the variables of the first update (or of ``build``).

    The optimizers may be of the current kind (``keras.optimizers.Adam``) or legacy
    (``keras.optimizers.legacy.Adam``, Larq's choice). Each keeps its own state and
    iteration count; the case optimizer's ``iterations`` counts its own updates.

    Saving: predicates are plain functions, so ``get_config`` stores the assignment made
    (by the order of the variables, which Keras keeps across save and load, and by
    name), and the name of each predicate registered with
    ``keras.saving.register_keras_serializable`` (as :meth:`Bop.is_binary_variable` is).
    A loaded case optimizer assigns a model's variables as saved.

    Args:
        *predicate_optimizer_pairs: one or more ``(predicate, optimizer)`` tuples;
            ``predicate(variable)`` returns whether ``optimizer`` trains ``variable``.
        default_optimizer: the optimizer of every variable no predicate claims
            (keyword only).
        name: the optimizer's name.
    """

    def __init__(self, *predicate_optimizer_pairs: tuple[Predicate, Any],
                 default_optimizer: Any = None, name: str = "optimizer_case"):
        super().__init__(name=name, weight_decay=None)
        self._learning_rate = None  # each optimizer has its own (Keras callbacks look)
        if not predicate_optimizer_pairs:
            raise ValueError("CaseOptimizer needs at least one (predicate, optimizer) pair")
        for i, pair in enumerate(predicate_optimizer_pairs):
            _check_pair(i, pair)
        if default_optimizer is not None and not isinstance(
                default_optimizer, (Optimizer, LegacyOptimizer)):
            raise TypeError("CaseOptimizer default_optimizer must be a Keras optimizer, got "
                            f"{type(default_optimizer).__name__}")
        self._predicates = self._no_dependency([p for p, _ in predicate_optimizer_pairs])
        # Tracked, so that checkpoints and the .keras format save their state.
        self.optimizers = [opt for _, opt in predicate_optimizer_pairs]
        self.default_optimizer = default_optimizer
        if default_optimizer is not None:
            self.optimizers.append(default_optimizer)
        self._create_iteration_mirror()
        # Per variable key: index in `optimizers`, or None (not trained). Set by `build`.
        # Not tracked (Keras would track plain dicts and lists): bookkeeping, not state.
        self._mapping: dict[Any, int | None] | None = None
        self._assignment: list[int | None] | None = None
        self._names: dict[str, int] = self._no_dependency({})
        self._restored: dict[str, Any] = self._no_dependency({})

    def _create_iteration_mirror(self) -> None:
        # Every optimizer names its step counter "iteration", and the HDF5 format saves
        # optimizer variables by name, so the counters collide there. They are saved
        # through this one variable instead, copied from them after each update and
        # back to them when weights are set.
        with tf.init_scope():
            self._inner_iterations = tf.Variable(
                [int(opt.iterations.numpy()) for opt in self.optimizers],
                name="inner_iterations", dtype=tf.int64, trainable=False)
        self._variables.append(self._inner_iterations)

    @property
    def pred_opt_pairs(self) -> tuple[tuple[Predicate, Any], ...]:
        """The ``(predicate, optimizer)`` pairs, without the default."""
        return tuple(zip(self._predicates, self.optimizers, strict=False))

    @property
    def var_opt_mapping(self) -> dict[str, int] | None:
        """Variable name -> optimizer index (the default last), once assigned.

        Only names that identify one variable; the full assignment, by the order of
        the variables, is in ``get_config()["var_opt_assignment"]``.
        """
        if self._mapping is None:
            return self._restored.get("names")
        return dict(self._names)

    # -- assigning variables to optimizers -------------------------------------------

    def build(self, var_list: Sequence[tf.Variable]) -> None:
        """Assign the variables to optimizers and create every optimizer's state."""
        if getattr(self, "_built", False):
            return
        var_list = list(var_list)
        self._assign(var_list)
        with tf.init_scope():
            for optimizer, variables in zip(self.optimizers, self._split(var_list), strict=True):
                if _is_legacy(optimizer):
                    optimizer._create_all_weights(variables)
                else:
                    optimizer.build(variables)
        self._built = True

    def _assign(self, var_list: list[tf.Variable]) -> None:
        saved = self._restored.get("assignment")
        if saved is not None and len(saved) == len(var_list):
            assignment = [_checked_index(i, len(self.optimizers)) for i in saved]
        else:
            assignment = [self._claim(var) for var in var_list]
        for index, predicate in enumerate(self._predicates):
            if index not in assignment:
                raise ValueError(self._unclaimed_message(index, predicate))
        self._mapping = self._no_dependency(
            {self._var_key(v): i for v, i in zip(var_list, assignment, strict=True)})
        self._assignment = self._no_dependency(assignment)
        self._names = self._no_dependency(_unique_names(var_list, assignment))

    def _claim(self, var: tf.Variable) -> int | None:
        saved_names = self._restored.get("names") or {}
        if var.name in saved_names:
            return _checked_index(saved_names[var.name], len(self.optimizers))
        claims = [i for i, predicate in enumerate(self._predicates) if predicate(var)]
        if len(claims) > 1:
            owners = ", ".join(self.optimizers[i].name for i in claims)
            raise ValueError(f"variable {var.name!r} is claimed by more than one "
                             f"optimizer ({owners}); make the predicates exclusive")
        if claims:
            return claims[0]
        if self.default_optimizer is not None:
            return len(self.optimizers) - 1
        warnings.warn(f"no optimizer trains variable {var.name!r}: no predicate claims it "
                      "and CaseOptimizer has no default_optimizer", stacklevel=4)
        return None

    def _unclaimed_message(self, index: int, predicate: Predicate) -> str:
        message = f"optimizer {self.optimizers[index].name!r} did not claim any variables"
        if predicate is _unknown_predicate:
            message += (" (this CaseOptimizer was loaded from a config whose saved "
                        "assignment does not fit these variables, and its predicate was "
                        "not saved: register the predicate with "
                        "keras.saving.register_keras_serializable, or compile with a new "
                        "CaseOptimizer)")
        return message

    def _split(self, items: list, var_of: Callable[[Any], tf.Variable] = lambda v: v
               ) -> list[list]:
        """``items`` (variables or (grad, var) pairs) grouped by optimizer."""
        groups: list[list] = [[] for _ in self.optimizers]
        for item in items:
            var = var_of(item)
            key = self._var_key(var)
            if key not in self._mapping:
                raise ValueError(f"CaseOptimizer was built for other variables than "
                                 f"{var.name!r}; build it with all trainable variables")
            if self._mapping[key] is not None:
                groups[self._mapping[key]].append(item)
        return groups

    # -- updates ---------------------------------------------------------------------

    def apply_gradients(self, grads_and_vars: Any, name: str | None = None,
                        skip_gradients_aggregation: bool = False, **kwargs: Any) -> tf.Variable:
        """Hand each optimizer the ``(gradient, variable)`` pairs of its variables."""
        grads_and_vars = list(grads_and_vars)
        with tf.init_scope():
            self.build([var for _, var in grads_and_vars])
        if grads_and_vars and all(grad is None for grad, _ in grads_and_vars):
            raise ValueError("no gradients provided for any variable: "
                             f"{[var.name for _, var in grads_and_vars]}")
        present = [(grad, var) for grad, var in grads_and_vars if grad is not None]
        skip = skip_gradients_aggregation or not kwargs.pop(
            "experimental_aggregate_gradients", True)
        groups = self._split(present, lambda pair: pair[1])
        with tf.name_scope(name or self.name):
            for optimizer, pairs in zip(self.optimizers, groups, strict=True):
                if not pairs:
                    continue
                if _is_legacy(optimizer):
                    optimizer.apply_gradients(pairs, experimental_aggregate_gradients=not skip)
                else:
                    optimizer.apply_gradients(pairs, skip_gradients_aggregation=skip)
            self._inner_iterations.assign(
                tf.stack([tf.cast(opt.iterations, tf.int64) for opt in self.optimizers]))
            return self._iterations.assign_add(1)

    def update_step(self, gradient: tf.Tensor, variable: tf.Variable) -> None:
        raise NotImplementedError("CaseOptimizer delegates updates to its optimizers")

    def finalize_variable_values(self, var_list: Sequence[tf.Variable]) -> None:
        # E.g. an inner optimizer with use_ema=True overwrites weights with averages.
        if self._mapping is None:
            return
        groups = self._split([v for v in var_list if self._var_key(v) in self._mapping])
        for optimizer, variables in zip(self.optimizers, groups, strict=True):
            if not _is_legacy(optimizer) and variables:
                optimizer.finalize_variable_values(variables)

    # -- state -----------------------------------------------------------------------

    @property
    def variables(self) -> _CallableList:
        """Own counters, then every optimizer's variables but its iteration counter."""
        inner = [v for opt in self.optimizers for v in _optimizer_variables(opt)
                 if v is not opt.iterations]
        return _CallableList(list(self._variables) + inner)

    def set_weights(self, weights: Sequence[Any]) -> None:
        variables = self.variables
        if len(weights) != len(variables):
            raise ValueError(f"CaseOptimizer has {len(variables)} variables, but "
                             f"{len(weights)} values were given")
        for variable, value in zip(variables, weights, strict=True):
            variable.assign(value)
        self._restore_inner_iterations()

    def _restore_inner_iterations(self) -> None:
        for optimizer, count in zip(self.optimizers, self._inner_iterations.numpy(),
                                    strict=True):
            optimizer.iterations.assign(count)

    def _own_saved_variables(self) -> list[tf.Variable]:
        # The .keras format saves optimizers of the current kind on its own (it walks
        # the attributes); own counters and legacy optimizers are saved here.
        legacy = [v for opt in self.optimizers if _is_legacy(opt) for v in opt.weights
                  if v is not opt.iterations]
        return list(self._variables) + legacy

    def save_own_variables(self, store: Any) -> None:
        for i, variable in enumerate(self._own_saved_variables()):
            store[str(i)] = variable.numpy()

    def load_own_variables(self, store: Any) -> None:
        variables = self._own_saved_variables()
        if len(store.keys()) != len(variables):
            warnings.warn(f"not restoring the state of optimizer {self.name!r}: it has "
                          f"{len(variables)} variables, the saved one {len(store.keys())}",
                          stacklevel=2)
            return
        for i, variable in enumerate(variables):
            variable.assign(store[str(i)])
        self._restore_inner_iterations()

    # -- config ----------------------------------------------------------------------

    def get_config(self) -> dict[str, Any]:
        pairs = self.pred_opt_pairs
        default = self.default_optimizer
        return {
            **super().get_config(),
            "optimizer_configs": [keras.optimizers.serialize(opt) for _, opt in pairs],
            "default_config": keras.optimizers.serialize(default) if default else None,
            "predicates": [_serialize_predicate(pred) for pred, _ in pairs],
            "var_opt_mapping": self.var_opt_mapping,
            "var_opt_assignment": (list(self._assignment) if self._assignment is not None
                                   else self._restored.get("assignment")),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any], custom_objects: Any = None) -> CaseOptimizer:
        """Rebuild from :meth:`get_config` (also reads Larq's CaseOptimizer configs)."""
        with keras_scope():  # "Bop" is bnn_cli's Bop, even where Larq holds the name
            optimizers = [keras.optimizers.deserialize(c, custom_objects=custom_objects)
                          for c in config["optimizer_configs"]]
        names = config.get("predicates") or [None] * len(optimizers)
        predicates = [
            (keras.saving.get_registered_object(n, custom_objects) if n else None)
            or _unknown_predicate
            for n in names
        ]
        default = config.get("default_config")
        case = cls(
            *zip(predicates, optimizers, strict=True),
            default_optimizer=keras.optimizers.deserialize(
                default, custom_objects=custom_objects) if default else None,
            name=config.get("name", "optimizer_case"),
        )
        # Larq's mapping is keyed by in-process variable ids, which never match again
        # (they are simply not found by name).
        case._restored = case._no_dependency({
            "assignment": config.get("var_opt_assignment"),
            "names": config.get("var_opt_mapping"),
        })
        return case


def _unique_names(var_list: list[tf.Variable], assignment: list[int | None]) -> dict[str, int]:
    """Variable name -> optimizer index, for names that identify one variable.

    Names need not be unique: tf-keras loads custom layers from the .keras format
    without their name scope (every kernel is then "kernel:0").
    """
    names = [v.name for v in var_list]
    counts = collections.Counter(names)
    return {name: index for name, index in zip(names, assignment, strict=True)
            if index is not None and counts[name] == 1}


def _checked_index(index: Any, count: int) -> int | None:
    if index is None:
        return None
    if not (isinstance(index, int) and 0 <= index < count):
        raise ValueError(f"saved CaseOptimizer assignment has optimizer index {index!r}, "
                         f"but there are {count} optimizers")
    return index


def _check_pair(index: int, pair: Any) -> None:
    if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
        raise TypeError(f"CaseOptimizer argument {index} must be a (predicate, optimizer) "
                        f"pair, got {pair!r}")
    predicate, optimizer = pair
    if not callable(predicate):
        raise TypeError(f"CaseOptimizer pair {index}: the predicate must be callable, got "
                        f"{type(predicate).__name__}")
    if not isinstance(optimizer, (Optimizer, LegacyOptimizer)):
        raise TypeError(f"CaseOptimizer pair {index}: expected a Keras optimizer, got "
                        f"{type(optimizer).__name__}")


# CaseOptimizer saves the registered names of its predicates.
keras.saving.register_keras_serializable(PACKAGE, "is_binary_variable")(Bop.is_binary_variable)
register("optimizer", Bop)
register("optimizer", CaseOptimizer)
