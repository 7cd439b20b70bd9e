"""The registry checks of a validated config: the model's graph and the training section.

Expands the model into its graph and checks every name and value against the registry
and Keras: layer types and arguments (their types too), quantizers, constraints,
activations, initializers, regularizers, the graph's inputs and cycles, the loss,
metrics, optimizer and monitored metric; each problem located at its file, line and key.
:func:`bnn_cli.assemble.check.check` runs these with the data and stage checks, once,
before anything is written.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from bnn_cli._keras import keras
from bnn_cli.config.argtypes import construction_problem, plain_mismatch
from bnn_cli.config.graph import Graph, Node, cycles, expand, topological
from bnn_cli.config.schema import WEIGHT_KINDS, Config, Problem, Schedule
from bnn_cli.config.source import PathKey
from bnn_cli.errors import did_you_mean
from bnn_cli.registry import REGISTRY, Entry, signature_params

# Keyword arguments every Keras layer takes through **kwargs.
BASE_LAYER_ARGS = {"name", "trainable", "dtype", "dynamic", "input_shape",
                   "batch_input_shape", "batch_size", "input_dim", "weights",
                   "activity_regularizer", "autocast"}


def graph_problems(config: Config) -> tuple[Graph, list[Problem]]:
    graph = expand(config)
    problems: list[Problem] = []
    known = {n.name for n in graph.nodes} | set(graph.inputs)
    for node in graph.nodes:
        problems += _node_problems(config, node, known, graph.inputs)
    for i, out in enumerate(graph.outputs):
        if out.startswith("?") or out not in known:
            problems.append(config.problem(("model", "outputs", i), f"output "
                                           f"{out.lstrip('?')!r} names no layer"
                                           f"{did_you_mean(out.lstrip('?'), known)}"))
    problems += cycles(config, graph.nodes)
    graph.nodes = topological(graph.nodes, graph.inputs)
    return graph, problems


def _node_problems(config: Config, node: Node, known: set[str],
                   inputs: list[str]) -> list[Problem]:
    def report(path: PathKey, message: str, key: bool = False) -> Problem:
        if node.context:
            message += f" ({node.context})"
        return config.problem(path, message, key=key)

    entry = REGISTRY.find("layer", node.type)
    if entry is None:
        return [report((*node.path, "type"), f"unknown layer type {node.type!r}"
                       f"{did_you_mean(node.type, REGISTRY.names('layer'))}")]
    problems = []
    accepted = {p.name for p in entry.params} | BASE_LAYER_ARGS
    for arg, value in node.args.items():
        path = node.arg_paths.get(arg, (*node.path, arg))
        if arg not in accepted:
            message = _unknown_args(entry, {arg}, f"layer {node.type}", BASE_LAYER_ARGS)
            problems.append(report(path, message or f"unknown argument {arg!r}", key=True))
            continue
        kind = component_kind(arg)
        message = _check_component(kind, value) if kind else None
        message = message or _value_problem(value)
        if message:
            problems.append(report(path, message))
    if not problems and isinstance(entry.obj, type):
        problems += _type_problems(entry, node, report)
    for ref in node.inputs:
        if ref.startswith("?") or ref not in known:
            name = ref.lstrip("?")
            problems.append(report((*node.path, "inputs"), f"input {name!r} names no layer"
                                   f"{did_you_mean(name, known)}; inputs name earlier "
                                   f"layers or {', '.join(repr(i) for i in inputs)}"))
    return problems


def _type_problems(entry: Entry, node: Node,
                   report: Callable[[PathKey, str], Problem]) -> list[Problem]:
    """Arguments of the wrong type, located at the argument: those Keras would take
    silently or refuse later, then what constructing the layer refuses (components are
    left out of that: they are checked above and resolved only when the model is built;
    so are all refusals but typed ones when one was left out, as it may be the cause)."""
    def where(arg: str) -> PathKey:
        return node.arg_paths.get(arg, (*node.path, arg))

    plain = {a: v for a, v in node.args.items() if a != "name" and not component_kind(a)}
    found = [report(where(a), m) for a, v in plain.items() if (m := plain_mismatch(entry, a, v))]
    refused = None if found else construction_problem(entry, plain)
    if refused is None:
        return found
    arg, message = refused
    typed = arg is not None and message.startswith("expected ")
    if not typed and len(plain) < len(node.args) - ("name" in node.args):
        return []
    if arg is None:
        return [report((*node.path, "type"), f"layer {node.type} refuses its arguments: "
                                             f"{message}")]
    return [report(where(arg), message)]


def _value_problem(value: Any) -> str | None:
    """A value no Keras argument means: a number written so that YAML read text, or a
    number that is not finite. Looks inside lists and mappings."""
    if isinstance(value, dict):
        return next(filter(None, map(_value_problem, value.values())), None)
    if isinstance(value, list):
        return next(filter(None, map(_value_problem, value)), None)
    if isinstance(value, float) and not math.isfinite(value):
        return f"{value} is not a finite number"
    if isinstance(value, str):
        try:
            number = float(value)
        except ValueError:
            return None
        if "e" not in value.lower() or not math.isfinite(number):
            return f"read {value!r} as text, not a number; write it without quotes"
        return (f"read {value!r} as text, not a number: YAML 1.1 reads an exponent as a "
                f"number only with a '.' and a sign, so write {_yaml_number(number)}")
    return None


def _yaml_number(number: float) -> str:
    """``1e30`` as YAML 1.1 reads a float: ``1.0e+30``."""
    mantissa, _, exponent = f"{number:e}".partition("e")
    mantissa = mantissa.rstrip("0")
    return f"{mantissa}0e{exponent}" if mantissa.endswith(".") else f"{mantissa}e{exponent}"


def component_kind(arg: str) -> str | None:
    """The registry kind a layer argument names (``kernel_quantizer`` -> quantizer)."""
    if arg.endswith("quantizer"):
        return "quantizer"
    for suffix in ("constraint", "initializer", "regularizer"):
        if arg.endswith(suffix):
            return suffix
    if arg == "activation":
        return "activation"
    return None


def _keras_names(module: Any) -> list[str]:
    names = [n for n in dir(module) if not n.startswith("_") and callable(getattr(module, n))]
    return [n for n in names if n not in {"get", "serialize", "deserialize"}]


def known_names(kind: str) -> list[str]:
    """Every name a component argument of this kind accepts."""
    if kind == "quantizer":
        return REGISTRY.names("quantizer")
    if kind == "activation":
        return sorted(set(_keras_names(keras.activations)) | set(REGISTRY.names("activation"))
                      | set(REGISTRY.names("quantizer")))
    module = {"constraint": keras.constraints, "initializer": keras.initializers,
              "regularizer": keras.regularizers}[kind]
    return sorted(set(_keras_names(module)) | set(REGISTRY.names(kind)))


def _check_component(kind: str, value: Any) -> str | None:
    """A problem message for a component value, or None."""
    if value is None:
        return None
    if isinstance(value, dict):
        name = value.get("type")
        if not isinstance(name, str):
            return f"a {kind} given as a mapping needs `type: NAME`"
    elif isinstance(value, str):
        name = value
    elif isinstance(value, (int, float)) and kind != "activation":
        return None  # e.g. an initializer constant is not a thing; let Keras say
    else:
        return f"a {kind} must be a name or {{type: NAME, ...arguments}}, got {value!r}"
    known = known_names(kind)
    lookup = {n.lower() for n in known} if kind != "quantizer" else set(known)
    if (name if kind == "quantizer" else name.lower()) not in lookup:
        return f"unknown {kind} {name!r}{did_you_mean(name, known)}"
    if isinstance(value, dict) and kind == "quantizer":
        entry = REGISTRY.get("quantizer", name)
        return _unknown_args(entry, {k for k in value if k != "type"}, f"quantizer {name}")
    return None


def _unknown_args(entry: Entry, given: set[str], what: str,
                  extra: set[str] | frozenset = frozenset()) -> str | None:
    allowed = {p.name for p in entry.params} | set(extra) | {"metrics", "name"}
    unknown = sorted(given - allowed)
    if not unknown:
        return None
    return (f"{what} has no argument {unknown[0]!r}"
            f"{did_you_mean(unknown[0], allowed - {'name'})}")


SMOOTHABLE_LOSSES = ("sparse_categorical_crossentropy", "categorical_crossentropy",
                     "binary_crossentropy")


def training_problems(config: Config, graph: Graph) -> list[Problem]:
    """Keras looks these names up only when training starts, so a typo would fail the
    run after its directory was created; they are checked with the rest."""
    training = config.spec.training
    problems = []
    try:
        keras.losses.get(training.loss)
    except (ValueError, TypeError):
        known = _keras_names(keras.losses)
        problems.append(config.problem(("training", "loss"), f"unknown loss "
                                       f"{training.loss!r}{did_you_mean(training.loss, known)}"))
    if training.label_smoothing and training.loss not in SMOOTHABLE_LOSSES:
        problems.append(config.problem(("training", "label_smoothing"), "label smoothing "
                                       f"works with the losses {', '.join(SMOOTHABLE_LOSSES)}"
                                       f", not {training.loss!r}; set it to 0 or change "
                                       "training.loss"))
    for i, name in enumerate(training.metrics):
        if not _is_metric(name):
            known = _keras_names(keras.metrics)
            problems.append(config.problem(("training", "metrics", i), f"unknown metric "
                                           f"{name!r}{did_you_mean(name, known)}"))
    spec = {"type": training.optimizer.type, **training.optimizer.args}
    problems += _optimizer_problems(config, spec, ("training", "optimizer"))
    logged = logged_metrics(config, graph)
    monitors = [(("training", "monitor"), training.monitor)]
    for key in ("early_stopping", "target"):
        part = getattr(training, key)
        if part and part.monitor:
            monitors.append((("training", key, "monitor"), part.monitor))
    for path, name in monitors:
        if name not in logged:
            hint = "" if config.spec.data.validation_split or not name.startswith("val_") \
                else " (val_ metrics need data.validation_split)"
            problems.append(config.problem(path, f"metric {name!r} is not logged"
                                           f"{did_you_mean(name, logged)}{hint}; logged "
                                           f"metrics: {', '.join(logged)}"))
    return problems


def _is_metric(name: str) -> bool:
    if name in ("accuracy", "acc", "crossentropy", "ce"):
        return True
    try:  # (get returns an unknown name unchanged)
        return callable(keras.metrics.get(name))
    except (ValueError, TypeError):
        return False


def logged_metrics(config: Config, graph: Graph) -> list[str]:
    """The names Keras logs each epoch for this config (what ``monitor`` may name)."""
    training = config.spec.training
    outputs = graph.outputs if len(graph.outputs) > 1 else [""]
    names = ["loss"] + [f"{o}_loss" for o in outputs if o]
    names += [f"{o}_{m}" if o else m for o in outputs for m in training.metrics]
    if config.spec.data.validation_split:
        names += [f"val_{n}" for n in names]
    return [*names, "learning_rate"]  # (the training loop logs it beside Keras's)


def _optimizer_problems(config: Config, spec: Any, path: PathKey) -> list[Problem]:
    if not isinstance(spec, dict) or not isinstance(spec.get("type"), str):
        return [config.problem(path, "an optimizer is a mapping with `type: NAME`, e.g. "
                                     "{type: Adam, learning_rate: 0.001}")]
    kind, args = spec["type"], {k: v for k, v in spec.items() if k != "type"}
    if kind.lower() == "case":
        problems = [config.problem((*path, k), f"a case optimizer takes `binary` and "
                                               f"`default`, not {k!r}", key=True)
                    for k in args if k not in ("binary", "default")]
        for part in ("binary", "default"):
            if part in args:
                problems += _optimizer_problems(config, args[part], (*path, part))
        return problems
    cls = optimizer_class(kind)
    if cls is None:
        return [config.problem((*path, "type"), f"unknown optimizer {kind!r}"
                               f"{did_you_mean(kind, optimizer_names())}")]
    accepted = {p.name for klass in cls.__mro__ if "__init__" in vars(klass)
                for p in signature_params(klass)}
    problems = []
    for arg, value in args.items():
        if arg not in accepted:
            problems.append(config.problem((*path, arg), f"optimizer {kind} has no argument "
                                           f"{arg!r}{did_you_mean(arg, accepted)}", key=True))
        elif arg == "learning_rate" and isinstance(value, dict):
            problems += _schedule_problems(config, value, (*path, arg))
        elif arg == "weight_decay" and isinstance(value, dict):
            problems += _decay_problems(config, value, (*path, arg))
        elif message := _value_problem(value):
            problems.append(config.problem((*path, arg), message))
    return problems


def _decay_problems(config: Config, value: dict[str, Any], path: PathKey) -> list[Problem]:
    """``weight_decay: {KIND: RATE}``: known kinds, rates >= 0."""
    problems = []
    for kind, rate in value.items():
        if kind not in WEIGHT_KINDS:
            problems.append(config.problem(
                (*path, kind), f"unknown kind of weight {kind!r}"
                f"{did_you_mean(str(kind), WEIGHT_KINDS)}; the kinds are "
                f"{', '.join(WEIGHT_KINDS)}", key=True))
        elif isinstance(rate, bool) or not isinstance(rate, int | float) or rate < 0:
            problems.append(config.problem((*path, kind), f"a decay rate is a number >= 0, "
                                                          f"not {rate!r}"))
    return problems


def _schedule_problems(config: Config, value: dict[str, Any], path: PathKey
                       ) -> list[Problem]:
    """An optimizer's own ``learning_rate`` schedule (a group of a case optimizer has
    its own), checked as ``training.learning_rate`` is: located at its keys."""
    try:
        Schedule.model_validate(value)
    except ValidationError as exc:
        return [config.problem((*path, *(str(k) for k in err["loc"][:1])),
                               f"learning-rate schedule: {err['msg'].rstrip('.')}; "
                               f"e.g. {{type: cosine, initial: 0.01, warmup_epochs: 1}}")
                for err in exc.errors()]
    return []


def optimizer_class(kind: str) -> type | None:
    """The optimizer class a config's ``type`` names: bnn_cli's (Bop) or Keras's."""
    entry = REGISTRY.find("optimizer", kind)
    if entry is not None:
        return entry.obj
    cls = getattr(keras.optimizers, kind, None)
    return cls if isinstance(cls, type) and issubclass(cls, keras.optimizers.Optimizer) \
        else None


def optimizer_names() -> list[str]:
    keras_names = [n for n in dir(keras.optimizers) if n[0].isupper() and n != "Optimizer"
                   and optimizer_class(n) is not None]
    return sorted(keras_names) + REGISTRY.names("optimizer") + ["case"]
