"""Building: a :class:`~bnn_cli.config.checks.CheckedConfig` -> a Keras model and optimizer.

Everything here was checked already; what only Keras can find out (a shape that does
not fit, an argument value a layer refuses) is reported for the layer where it happens,
with the config's file and line, and the model's weights are capped so that a typo in a
size is an error instead of gigabytes of allocation.
"""

from __future__ import annotations

import copy
from typing import Any

from bnn_cli import optimizers, quantizers
from bnn_cli._keras import keras, tf
from bnn_cli.assemble.check import CheckedConfig
from bnn_cli.config.checks import component_kind, optimizer_class
from bnn_cli.config.graph import Node
from bnn_cli.config.schema import Problem, Schedule, TrainingConfig, ensure_valid
from bnn_cli.errors import UserError, error_text
from bnn_cli.registry import REGISTRY, NamedActivation
from bnn_cli.schedules import EpochSchedule

MAX_WEIGHTS = 2**29
"""The most numbers a model's weights may hold (2 GiB of float32), far beyond any BNN.
A typo such as ``filters: 1000000`` would otherwise allocate (and randomly initialize)
many gigabytes: minutes of work, or the process killed for memory, instead of an error."""


def build_model(checked: CheckedConfig) -> keras.Model:
    """The Keras model of a checked config."""
    graph, config = checked.graph, checked.config
    tensors = {name: keras.Input(shape=shape, name=name, dtype=dtype)
               for name, (shape, dtype) in checked.input_shapes.items()}
    problems: list[Problem] = []
    budget = _WeightBudget()
    for node in graph.nodes:
        if any(r not in tensors for r in node.inputs):
            continue  # an earlier layer failed; that one is reported
        x = [tensors[r] for r in node.inputs]
        try:
            layer = make_layer(node)
            with budget:
                tensors[node.name] = layer(x[0] if len(x) == 1 else x)
        except Exception as exc:  # Keras raises many types for bad shapes/arguments
            shapes_in = ", ".join(str(tuple(t.shape)) for t in x)
            message = f"layer {node.name!r} ({node.type}) on input shape {shapes_in}: " \
                      f"{error_text(exc)}"
            if node.context:
                message += f" ({node.context})"
            problems.append(config.problem(node.path, message))
    ensure_valid(problems)
    inputs = [tensors[n] for n in graph.inputs]
    outputs = [tensors[o] for o in graph.outputs]
    return keras.Model(inputs=inputs[0] if len(inputs) == 1 else inputs,
                       outputs=outputs[0] if len(outputs) == 1 else outputs,
                       name=config.spec.model.name or config.name)


def make_layer(node: Node) -> keras.layers.Layer:
    entry = REGISTRY.get("layer", node.type)
    args = {}
    for arg, value in node.args.items():
        kind = component_kind(arg)
        # A copy: Keras wraps lists and dicts a layer keeps (for tracking) in place,
        # which would leave TensorFlow objects inside the config (unserializable).
        value = copy.deepcopy(value)
        args[arg] = resolve_component(kind, value) if kind else value
    return entry.obj(name=node.name, **{k: v for k, v in args.items() if k != "name"})


def resolve_component(kind: str, value: Any) -> Any:
    """A component argument's value (name or ``{type: ..., args}``) -> object.

    bnn_cli's registry comes first, so a name means bnn_cli's component whatever
    another library (Larq) put into Keras's global table under it.
    """
    if value is None:
        return None
    name, args = (value["type"], {k: v for k, v in value.items() if k != "type"}) \
        if isinstance(value, dict) else (value, {})
    if kind == "quantizer":
        entry = REGISTRY.get("quantizer", name)
        return entry.obj(**args) if isinstance(entry.obj, type) else quantizers.get(name)
    if kind == "activation":
        if isinstance(name, str) and (REGISTRY.find("activation", name)
                                      or REGISTRY.find("quantizer", name)):
            return NamedActivation(name, **args)
        return keras.activations.get(value)
    entry = REGISTRY.find(kind, name) if isinstance(name, str) else None
    if entry is not None:
        return entry.obj(**args)
    getter = {"constraint": keras.constraints.get, "initializer": keras.initializers.get,
              "regularizer": keras.regularizers.get}[kind]
    return getter({"class_name": name, "config": args} if isinstance(value, dict) else value)


class _WeightBudget:
    """``with budget:`` refuses each variable that would take the weights created under
    it (all uses together) over ``limit`` numbers, before its initializer allocates it."""

    def __init__(self, limit: int = MAX_WEIGHTS):
        self.limit, self.total = limit, 0
        self._scopes: list[Any] = []

    def _creator(self, next_creator, **kwargs):
        shape = kwargs.get("shape")
        size = tf.TensorShape(shape).num_elements() if shape is not None else None
        if self.total + (size or 0) > self.limit:
            raise UserError(f"its weights would take the model to {self.total + size:,} "
                            f"numbers, over the limit of {self.limit:,} (2 GiB of float32); "
                            "check the sizes (filters, units, kernel_size, input shape)")
        self.total += size or 0
        return next_creator(**kwargs)

    def __enter__(self) -> _WeightBudget:
        self._scopes.append(tf.variable_creator_scope(self._creator))
        self._scopes[-1].__enter__()
        return self

    def __exit__(self, *exc_info) -> None:
        self._scopes.pop().__exit__(*exc_info)


# ---------------------------------------------------------------------------------------
# The optimizer
# ---------------------------------------------------------------------------------------


def build_loss(training: TrainingConfig) -> Any:
    """``training.loss``, with ``training.label_smoothing`` where it is set: Keras's own
    smoothing for one-hot and binary labels; for class indices, the same formula on
    their one-hot form."""
    smoothing, name = training.label_smoothing, training.loss
    if not smoothing:
        return name
    if name == "sparse_categorical_crossentropy":
        def sparse_categorical_crossentropy(y_true: tf.Tensor, y_pred: tf.Tensor) -> tf.Tensor:
            labels = tf.cast(tf.reshape(y_true, tf.shape(y_pred)[:-1]), tf.int32)
            return keras.losses.categorical_crossentropy(
                tf.one_hot(labels, tf.shape(y_pred)[-1], dtype=y_pred.dtype), y_pred,
                label_smoothing=smoothing)

        return sparse_categorical_crossentropy
    classes = {"categorical_crossentropy": keras.losses.CategoricalCrossentropy,
               "binary_crossentropy": keras.losses.BinaryCrossentropy}
    return classes[name](label_smoothing=smoothing)


def learning_rate(training: TrainingConfig, steps_per_epoch: int) -> Any:
    if isinstance(training.learning_rate, float | int):
        return float(training.learning_rate)
    return EpochSchedule(training.learning_rate.model_dump(), steps_per_epoch,
                         training.epochs)


def build_optimizer(training: TrainingConfig, steps_per_epoch: int) -> Any:
    """The optimizer a config asks for; ``type: case`` pairs one for binary weights
    (``binary:``, e.g. Bop) with one for everything else (``default:``)."""

    spec = {"type": training.optimizer.type, **training.optimizer.args}

    def make(spec: dict[str, Any], key: str) -> Any:
        return _optimizer(spec, training, steps_per_epoch, key)

    if spec["type"].lower() != "case":
        return make(spec, "training.optimizer")
    return optimizers.CaseOptimizer(
        (optimizers.Bop.is_binary_variable,
         make(spec.get("binary", {"type": "Bop"}), "training.optimizer.binary")),
        default_optimizer=make(spec.get("default", {"type": "Adam"}),
                               "training.optimizer.default"),
    )


def _optimizer(spec: dict[str, Any], training: TrainingConfig, steps_per_epoch: int,
               key: str) -> Any:
    """One optimizer; its ``learning_rate`` its own (a number or a schedule, as a group
    of a case optimizer has: QuickNet's Adam and SGD) or ``training.learning_rate``."""
    kind = spec["type"]
    cls = optimizer_class(kind)
    args = {k: v for k, v in spec.items() if k != "type"}
    rates = args.pop("weight_decay") if isinstance(args.get("weight_decay"), dict) else None
    if rates is not None:
        cls = _decaying_by_kind(cls)
    if isinstance(args.get("learning_rate"), dict):
        args["learning_rate"] = EpochSchedule(Schedule(**args["learning_rate"]).model_dump(),
                                              steps_per_epoch, training.epochs)
    if REGISTRY.find("optimizer", kind) is None:  # Bop has no learning rate
        args.setdefault("learning_rate", learning_rate(training, steps_per_epoch))
    try:
        optimizer = cls(**args)
    except (TypeError, ValueError) as exc:  # a value the optimizer refuses
        raise UserError(f"{key}: {kind}: {exc}") from None
    if rates is not None:
        optimizer.decay_rates = {k: float(v) for k, v in rates.items() if v}
    return optimizer


def weight_kind(variable: tf.Variable) -> str:
    """Which of :data:`~bnn_cli.config.schema.WEIGHT_KINDS` a variable is."""
    if optimizers.Bop.is_binary_variable(variable):
        return "binary_kernels"
    name = variable.name.split("/")[-1].split(":")[0]
    if name in ("kernel", "depthwise_kernel", "pointwise_kernel", "embeddings"):
        return "kernels"
    if name in ("gamma", "beta"):
        return "norms"
    return "biases" if name == "bias" else "shifts"


def _decaying_by_kind(cls: type) -> type:
    """``cls`` with decoupled weight decay at a rate per kind of variable: after each
    step's gradients, ``w -= learning_rate * rate * w`` (AdamW's decay, which Keras's
    optimizers apply at one rate to every variable)."""

    def _apply_weight_decay(self: Any, variables: list[tf.Variable]) -> None:
        def apply(distribution: Any, variables: list[tf.Variable]) -> None:
            for variable in variables:
                rate = self.decay_rates.get(weight_kind(variable))
                if rate:
                    def decay(v: tf.Variable, rate: float = rate) -> None:
                        lr = tf.cast(self.learning_rate, v.dtype)
                        v.assign_sub(v * tf.cast(rate, v.dtype) * lr)

                    distribution.extended.update(variable, decay, group=False)

        tf.__internal__.distribute.interim.maybe_merge_call(
            apply, self._distribution_strategy, variables)

    return type(cls.__name__, (cls,), {"_apply_weight_decay": _apply_weight_decay,
                                       "decay_rates": {}})
