"""The model builder: a validated config's ``model`` section -> a Keras model.

Three steps, each reporting problems with the config's file/line/key path:

1. :func:`expand` turns defaults, blocks and ``repeat`` into a flat list of
   :class:`Node` s (one per Keras layer) with resolved names and inputs.
2. :func:`check_nodes` checks every node against the registry: layer type, argument
   names, quantizer/constraint/activation/initializer/regularizer names, graph inputs
   and cycles. It reports every problem at once.
3. :func:`build_model` instantiates the layers and wires the functional graph; a shape
   that does not fit is reported for the layer where it happens.
"""

from __future__ import annotations

import copy
import importlib
import importlib.util
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnn_cli import catalog, quantizers
from bnn_cli import layers as qlayers  # noqa: F401  (registers the quantized layers)
from bnn_cli._keras import keras, tf
from bnn_cli.config import Config, ConfigError, Problem, ensure_valid
from bnn_cli.errors import UserError, did_you_mean
from bnn_cli.registry import REGISTRY, Entry
from bnn_cli.yaml_source import PathKey, format_path

# Keyword arguments every Keras layer takes through **kwargs.
BASE_LAYER_ARGS = {"name", "trainable", "dtype", "dynamic", "input_shape",
                   "batch_input_shape", "batch_size", "input_dim", "weights",
                   "activity_regularizer", "autocast"}
# Keys of a layer spec that are not layer arguments.
SPEC_KEYS = {"type", "name", "inputs", "repeat"}
_PARAM = re.compile(r"\$\{(\w+)\}")


@dataclass
class Node:
    """One Keras layer of the model, with where it was written."""

    name: str
    type: str
    args: dict[str, Any]
    inputs: list[str]
    path: PathKey
    context: str = ""  # "in block 'x' used at model.layers[3]" for block layers
    arg_paths: dict[str, PathKey] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# Plugins
# ---------------------------------------------------------------------------------------


def load_plugins(config: Config, extra: Iterable[str] = ()) -> None:
    """Import the Python files/modules a config (or ``--plugin``) names, so their
    quantizers and layers are registered. The only code a config can cause to run."""
    base = config.path.parent if config.path else Path.cwd()
    problems = []
    for i, plugin in enumerate([*config.spec.plugins, *extra]):
        try:
            import_plugin(plugin, base)
        except UserError as exc:
            problems.append(config.problem(("plugins", i), str(exc)))
    ensure_valid(problems)


def import_plugin(plugin: str, base: Path | None = None) -> None:
    """Import ``plugin``: a ``.py`` file (relative to ``base``, default the working
    folder) or a module name."""
    base = base or Path.cwd()
    if plugin.endswith(".py") or "/" in plugin:
        path = (base / plugin).resolve()
        if not path.is_file():
            raise UserError(f"plugin file {plugin!r} not found (looked at {path})")
        module_name = f"bnn_plugin_{path.stem}_{abs(hash(str(path)))}"
        if module_name in sys.modules:
            return
        spec = importlib.util.spec_from_file_location(module_name, path)
        if spec is None:  # e.g. a file without the .py suffix
            raise UserError(f"plugin file {plugin!r} is not a Python (.py) file")
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except UserError:
            raise
        except Exception as exc:  # the plugin's own bug: say where
            del sys.modules[module_name]
            raise UserError(f"plugin {plugin!r} failed to import: "
                            f"{type(exc).__name__}: {exc}") from None
        return
    try:
        importlib.import_module(plugin)
    except ModuleNotFoundError as exc:
        raise UserError(f"plugin module {plugin!r} not found ({exc}); give a module on "
                        "the Python path or a path to a .py file") from None
    except UserError:
        raise
    except Exception as exc:  # a malformed name ('', '.x') or the module's own bug
        raise UserError(f"plugin module {plugin!r} cannot be imported: "
                        f"{type(exc).__name__}: {exc}; give a module on the Python path "
                        "or a path to a .py file") from None


# ---------------------------------------------------------------------------------------
# 1. Expansion: defaults, blocks, repeat -> nodes
# ---------------------------------------------------------------------------------------


class _Expander:
    def __init__(self, config: Config):
        self.config = config
        self.model = config.spec.model
        self.nodes: list[Node] = []
        self.problems: list[Problem] = []
        self.names: set[str] = set()
        self.counters: dict[str, int] = {}

    def problem(self, path: PathKey, message: str, *, key: bool = False) -> None:
        self.problems.append(self.config.problem(path, message, key=key))

    def unique(self, base: str) -> str:
        base = re.sub(r"[^A-Za-z0-9_.-]", "_", base)
        name = base
        while name in self.names:
            self.counters[base] = self.counters.get(base, 0) + 1
            name = f"{base}_{self.counters[base]}"
        self.names.add(name)
        return name

    def sequence(self, specs: list[dict], path: PathKey, current: str | None,
                 scope: dict[str, str], prefix: str, context: str) -> str | None:
        """Expand a list of layer specs chained in order; ``scope`` maps local names."""
        for i, spec in enumerate(specs):
            current = self.item(spec, (*path, i), current, scope, prefix, context)
        return current

    def item(self, spec: Any, path: PathKey, current: str | None, scope: dict[str, str],
             prefix: str, context: str) -> str | None:
        if not isinstance(spec, dict):
            self.problem(path, "a layer must be a mapping with a `type` (or `block`) key, "
                               f"got {spec!r}")
            return current
        repeat = spec.get("repeat", 1)
        if not isinstance(repeat, int) or isinstance(repeat, bool) or not 1 <= repeat <= 10_000:
            self.problem((*path, "repeat"), f"repeat must be a whole number from 1 to 10000, "
                                            f"got {repeat!r}")
            repeat = 1
        local = spec.get("name")
        for r in range(repeat):
            suffix = f"_{r + 1}" if repeat > 1 else ""
            if "block" in spec:
                current = self.block_use(spec, path, current, scope, prefix, context, suffix)
            else:
                current = self.layer(spec, path, current, scope, prefix, context, suffix)
        if isinstance(local, str) and current is not None:
            scope[local] = current  # a repeated item's name refers to its last repetition
        return current

    def resolve_inputs(self, spec: dict, path: PathKey, current: str | None,
                       scope: dict[str, str]) -> list[str]:
        raw = spec.get("inputs")
        if raw is None:
            return [current] if current else []
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, list) or not all(isinstance(x, str) for x in items):
            self.problem((*path, "inputs"), "inputs must be a layer name or a list of names")
            return []
        return [scope.get(x, f"?{x}") for x in items]  # "?name": checked in check_nodes

    def layer(self, spec: dict, path: PathKey, current: str | None, scope: dict[str, str],
              prefix: str, context: str, suffix: str) -> str | None:
        kind = spec.get("type")
        if not isinstance(kind, str):
            self.problem(path, "a layer needs `type: LayerName` (e.g. QuantDense) or "
                               "`block: BLOCK_NAME`")
            return current
        local = spec.get("name")
        base = f"{prefix}{local if isinstance(local, str) else _snake(kind)}{suffix}"
        name = self.unique(base)
        args = {**self.model.defaults.get(kind, {}),
                **{k: v for k, v in spec.items() if k not in SPEC_KEYS}}
        arg_paths = {k: (*path, k) if k in spec else ("model", "defaults", kind, k)
                     for k in args}
        node = Node(name=name, type=kind, args=args, path=path, context=context,
                    inputs=self.resolve_inputs(spec, path, current, scope), arg_paths=arg_paths)
        self.nodes.append(node)
        return name

    def block_use(self, spec: dict, path: PathKey, current: str | None, scope: dict[str, str],
                  prefix: str, context: str, suffix: str) -> str | None:
        block_name = spec["block"]
        block = self.model.blocks.get(block_name) if isinstance(block_name, str) else None
        if block is None:
            known = list(self.model.blocks)
            self.problem((*path, "block"), f"unknown block {block_name!r}"
                         f"{did_you_mean(str(block_name), known)}"
                         + ("" if known else "; define it under model.blocks"))
            return current
        given = {k: v for k, v in spec.items() if k not in SPEC_KEYS | {"block"}}
        values = self.block_params(block_name, block.params, given, path)
        if values is None:
            return current
        use = spec.get("name") if isinstance(spec.get("name"), str) else block_name
        use_prefix = f"{prefix}{use}{suffix}_"
        inputs = self.resolve_inputs(spec, path, current, scope)
        local_scope = {"input": inputs[0] if inputs else current or ""}
        body = _substitute(block.layers, values)
        if isinstance(body, _MissingParam):
            self.problem(("model", "blocks", block_name, "layers"),
                         f"unknown block parameter ${{{body.name}}}"
                         f"{did_you_mean(body.name, values)}; declare it under params")
            return current
        inner_context = f"in block {block_name!r} used at {format_path(path)}"
        return self.sequence(body, ("model", "blocks", block_name, "layers"),
                             local_scope["input"], local_scope, use_prefix, inner_context)

    def block_params(self, block_name: str, declared: dict[str, Any], given: dict[str, Any],
                     path: PathKey) -> dict[str, Any] | None:
        ok = True
        for key in given:
            if key not in declared:
                self.problem((*path, key), f"block {block_name!r} has no parameter {key!r}"
                             f"{did_you_mean(key, declared)}; its parameters: "
                             f"{', '.join(declared) or 'none'}", key=True)
                ok = False
        missing = [k for k, v in declared.items() if v is None and k not in given]
        if missing:
            self.problem(path, f"block {block_name!r} needs parameter(s) "
                               f"{', '.join(missing)}")
            ok = False
        return {**declared, **given} if ok else None


@dataclass
class _MissingParam:
    name: str


def _substitute(value: Any, params: dict[str, Any]) -> Any:
    """Replace ``${name}`` in a block body (a whole-string reference keeps the type)."""
    if isinstance(value, str):
        refs = _PARAM.findall(value)
        for ref in refs:
            if ref not in params:
                return _MissingParam(ref)
        whole = _PARAM.fullmatch(value)
        if whole:
            return params[whole.group(1)]
        return _PARAM.sub(lambda m: str(params[m.group(1)]), value)
    if isinstance(value, list):
        out = [_substitute(v, params) for v in value]
        return next((v for v in out if isinstance(v, _MissingParam)), out)
    if isinstance(value, dict):
        out = {k: _substitute(v, params) for k, v in value.items()}
        return next((v for v in out.values() if isinstance(v, _MissingParam)), out)
    return value


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z][a-z])", "_", name).lower()


def expand(config: Config, input_names: list[str]) -> tuple[list[Node], list[str]]:
    """Flatten the model section into nodes; returns (nodes, output node names)."""
    expander = _Expander(config)
    expander.names.update(input_names)
    scope = {name: name for name in input_names}
    last = None
    for i, spec in enumerate(config.spec.model.layers):
        first = input_names[0] if i == 0 else last
        last = expander.item(spec, ("model", "layers", i), first, scope, "", "")
    ensure_valid(expander.problems)
    # Names written in the config (top-level or inside blocks) resolve to nodes.
    known = {n.name for n in expander.nodes} | set(input_names)
    outputs = config.spec.model.outputs or ([last] if last else [])
    for node in expander.nodes:
        node.inputs = [_resolve_ref(ref, scope, known) for ref in node.inputs]
    outputs = [_resolve_ref(o if o in scope or o in known else f"?{o}", scope, known)
               for o in outputs]
    return expander.nodes, outputs


def _resolve_ref(ref: str, scope: dict[str, str], known: set[str]) -> str:
    if ref.startswith("?"):
        name = ref[1:]
        return scope.get(name, name if name in known else ref)
    return ref


# ---------------------------------------------------------------------------------------
# 2. Checking nodes against the registry
# ---------------------------------------------------------------------------------------


def _component_kind(arg: str) -> str | None:
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
    custom = [n for n in keras.utils.get_custom_objects() if ">" not in n]
    if kind == "quantizer":
        return REGISTRY.names("quantizer")
    if kind == "activation":
        return sorted(set(_keras_names(keras.activations)) | set(custom)
                      | set(REGISTRY.names("activation")) | set(REGISTRY.names("quantizer")))
    module = {"constraint": keras.constraints, "initializer": keras.initializers,
              "regularizer": keras.regularizers}[kind]
    return sorted(set(_keras_names(module)) | set(REGISTRY.names(kind)))


def resolve_component(kind: str, value: Any) -> Any:
    """A component argument's value (name or ``{type: ..., args}``) -> object."""
    if value is None:
        return None
    if kind == "quantizer":
        if isinstance(value, dict):
            entry = REGISTRY.get("quantizer", value["type"])
            args = {k: v for k, v in value.items() if k != "type"}
            return entry.obj(**args) if isinstance(entry.obj, type) else entry.obj
        return quantizers.get(value)
    if kind == "activation":
        return keras.activations.get(value)
    getter = {"constraint": keras.constraints.get, "initializer": keras.initializers.get,
              "regularizer": keras.regularizers.get}[kind]
    if isinstance(value, dict):
        entry = REGISTRY.find(kind, value["type"])
        args = {k: v for k, v in value.items() if k != "type"}
        if entry is not None:
            return entry.obj(**args)
        return getter({"class_name": value["type"], "config": args})
    entry = REGISTRY.find(kind, value)
    return entry.obj() if entry is not None and isinstance(entry.obj, type) else getter(value)


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


def check_nodes(config: Config, nodes: list[Node], outputs: list[str],
                inputs: list[str]) -> None:
    problems: list[Problem] = []

    def report(path: PathKey, node: Node | None, message: str, key: bool = False) -> None:
        if node is not None and node.context:
            message += f" ({node.context})"
        problems.append(config.problem(path, message, key=key))

    known = {n.name for n in nodes} | set(inputs)
    for node in nodes:
        entry = REGISTRY.find("layer", node.type)
        if entry is None:
            report((*node.path, "type"), node, f"unknown layer type {node.type!r}"
                   f"{did_you_mean(node.type, REGISTRY.names('layer'))}")
            continue
        for arg, value in node.args.items():
            path = node.arg_paths.get(arg, (*node.path, arg))
            if arg not in {p.name for p in entry.params} | BASE_LAYER_ARGS:
                msg = _unknown_args(entry, {arg}, f"layer {node.type}", BASE_LAYER_ARGS)
                report(path, node, msg or f"unknown argument {arg!r}", key=True)
                continue
            kind = _component_kind(arg)
            message = _check_component(kind, value) if kind else None
            if message:
                report(path, node, message)
        for ref in node.inputs:
            if ref.startswith("?") or ref not in known:
                name = ref.lstrip("?")
                report((*node.path, "inputs"), node, f"input {name!r} names no layer"
                       f"{did_you_mean(name, known)}; inputs name earlier layers or "
                       f"{', '.join(repr(i) for i in inputs)}")
    for i, out in enumerate(outputs):
        if out.startswith("?") or out not in known:
            report(("model", "outputs", i), None, f"output {out.lstrip('?')!r} names no layer"
                   f"{did_you_mean(out.lstrip('?'), known)}")
    problems += _cycles(config, nodes)
    ensure_valid(problems)


def _cycles(config: Config, nodes: list[Node]) -> list[Problem]:
    """Nodes that (indirectly) take their own output as input."""
    by_name = {n.name: n for n in nodes}
    state: dict[str, int] = {}  # 1 = visiting, 2 = done
    problems: list[Problem] = []

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == 2 or name not in by_name:
            return
        if state.get(name) == 1:
            cycle = trail[trail.index(name):] + [name]
            problems.append(config.problem((*by_name[name].path, "inputs"),
                                           f"cycle in the graph: {' -> '.join(cycle)}"))
            return
        state[name] = 1
        for ref in by_name[name].inputs:
            visit(ref, [*trail, name])
        state[name] = 2

    for node in nodes:
        visit(node.name, [])
    return problems


def load_checked_config(path: str | Path, overrides: list[str] | None = None,
                        plugins: Iterable[str] = ()) -> Config:
    """Load a config and check its model against the registry, reporting every problem
    in the file at once (schema problems elsewhere do not hide the model's)."""
    from bnn_cli.config import ConfigFile, ModelConfig, load_config

    catalog.load_builtins()
    try:
        config = load_config(path, overrides)
    except ConfigError as exc:
        problems = list(exc.problems)
        raw = exc.document.data if exc.document is not None else None
        model_raw = raw.get("model") if isinstance(raw, dict) else None
        try:
            model = ModelConfig.model_validate(model_raw)
        except Exception:  # the model section itself is reported already
            raise exc from None
        partial = Config(ConfigFile.model_construct(model=model, plugins=[]), exc.document,
                         Path(path))
        try:
            _static_checks(partial)
        except ConfigError as more:
            problems += more.problems
        raise ConfigError(problems, exc.document) from None
    load_plugins(config, plugins)
    problems = _training_problems(config)
    try:
        _static_checks(config)
    except ConfigError as exc:
        problems = exc.problems + problems
    ensure_valid(problems)
    return config


def _training_problems(config: Config) -> list[Problem]:
    """Keras looks loss and metric names up only when training starts, so a typo would
    fail the run after its directory was created; check them with the rest."""
    training = config.spec.training
    problems = []
    try:
        keras.losses.get(training.loss)
    except (ValueError, TypeError):
        known = _keras_names(keras.losses)
        problems.append(config.problem(("training", "loss"), f"unknown loss "
                                       f"{training.loss!r}{did_you_mean(training.loss, known)}"))
    for i, name in enumerate(training.metrics):
        try:  # (get returns an unknown name unchanged)
            known_metric = name in ("accuracy", "acc", "crossentropy", "ce") or \
                callable(keras.metrics.get(name))
        except (ValueError, TypeError):
            known_metric = False
        if not known_metric:
            known = _keras_names(keras.metrics)
            problems.append(config.problem(("training", "metrics", i), f"unknown metric "
                                           f"{name!r}{did_you_mean(name, known)}"))
    return problems


def _static_checks(config: Config) -> None:
    shapes = [s.name for s in config.spec.model.inputs] if config.spec.model.inputs else \
        ["input"]
    nodes, outputs = expand(config, shapes)
    check_nodes(config, nodes, outputs, shapes)


# ---------------------------------------------------------------------------------------
# 3. Building
# ---------------------------------------------------------------------------------------


def _topological(nodes: list[Node], inputs: list[str]) -> list[Node]:
    ready = set(inputs)
    pending = list(nodes)
    ordered: list[Node] = []
    while pending:
        progress = [n for n in pending if all(r in ready for r in n.inputs)]
        if not progress:  # unreachable after check_nodes; keep the loop finite anyway
            break
        for n in progress:
            ordered.append(n)
            ready.add(n.name)
        pending = [n for n in pending if n.name not in ready]
    return ordered


def make_layer(node: Node) -> keras.layers.Layer:
    entry = REGISTRY.get("layer", node.type)
    args = {}
    for arg, value in node.args.items():
        kind = _component_kind(arg)
        # A copy: Keras wraps lists and dicts a layer keeps (for tracking) in place,
        # which would leave TensorFlow objects inside the config (unserializable).
        value = copy.deepcopy(value)
        args[arg] = resolve_component(kind, value) if kind else value
    return entry.obj(name=node.name, **{k: v for k, v in args.items() if k != "name"})


def error_text(exc: Exception) -> str:
    """The line of a Keras/TensorFlow error that says what is wrong (for messages)."""
    text = str(exc).split("Call arguments received")[0].strip().splitlines()
    # Keras wraps errors as 'Exception encountered when calling layer ...'; keep the
    # first line that says what is wrong.
    lines = [ln.strip() for ln in text if ln.strip()]
    if "in user code:" in lines:  # then a stack of 'File ...' lines; the reason is last
        return lines[-1][:300]
    useful = [ln for ln in lines if not ln.startswith("Exception encountered")]
    return (useful or lines or [type(exc).__name__])[0][:300]


MAX_WEIGHTS = 2**29
"""The most numbers a model's weights may hold (2 GiB of float32), far beyond any BNN.
A typo such as ``filters: 1000000`` would otherwise allocate (and randomly initialize)
many gigabytes: minutes of work, or the process killed for memory, instead of an error."""


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


def build_model(config: Config, input_shape: Iterable[int | None] | None = None,
                *, plugins: Iterable[str] = ()) -> keras.Model:
    """Build the Keras model described by ``config`` (input shape from the data if the
    model section does not give one)."""
    catalog.load_builtins()  # every built-in component is registered before checking
    load_plugins(config, plugins)
    input_specs = config.spec.model.inputs
    if input_specs is None:
        if input_shape is None:
            raise UserError("the model has no `inputs:` and no input shape was given")
        shapes = {"input": (list(input_shape), "float32")}
    else:
        shapes = {s.name: (s.shape, s.dtype) for s in input_specs}
    nodes, outputs = expand(config, list(shapes))
    check_nodes(config, nodes, outputs, list(shapes))
    tensors = {name: keras.Input(shape=shape, name=name, dtype=dtype)
               for name, (shape, dtype) in shapes.items()}
    problems = []
    budget = _WeightBudget()
    for node in _topological(nodes, list(shapes)):
        if any(r not in tensors for r in node.inputs):
            continue  # an earlier layer failed; that one is reported
        layer_args = node.inputs[0] if len(node.inputs) == 1 else [tensors[r] for r in
                                                                   node.inputs]
        try:
            layer = make_layer(node)
            x = tensors[layer_args] if isinstance(layer_args, str) else layer_args
            with budget:
                tensors[node.name] = layer(x)
        except Exception as exc:  # Keras raises many types for bad shapes/arguments
            shapes_in = ", ".join(str(tuple(tensors[r].shape)) for r in node.inputs)
            message = f"layer {node.name!r} ({node.type}) on input shape {shapes_in}: " \
                      f"{error_text(exc)}"
            if node.context:
                message += f" ({node.context})"
            problems.append(config.problem(node.path, message))
    ensure_valid(problems)
    model_inputs = [tensors[n] for n in shapes]
    model_outputs = [tensors[o] for o in outputs]
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", config.spec.model.name or config.name)
    return keras.Model(
        inputs=model_inputs[0] if len(model_inputs) == 1 else model_inputs,
        outputs=model_outputs[0] if len(model_outputs) == 1 else model_outputs,
        name=name,
    )


# ---------------------------------------------------------------------------------------
# JSON schema of a layer spec, from the registry
# ---------------------------------------------------------------------------------------


def layer_json_schema() -> dict[str, Any]:
    """A layer spec: ``type`` from the registry's layers, or a block use."""
    layer_types = REGISTRY.names("layer")
    quantizer_names = REGISTRY.names("quantizer")
    return {
        "type": "object",
        "description": "A layer (`type` + the layer's own arguments) or a block use "
                       "(`block` + parameters). `name`, `inputs` and `repeat` are "
                       "available on both.",
        "properties": {
            "type": {"type": "string", "enum": layer_types},
            "block": {"type": "string"},
            "name": {"type": "string"},
            "inputs": {"oneOf": [{"type": "string"},
                                 {"type": "array", "items": {"type": "string"}}]},
            "repeat": {"type": "integer", "minimum": 1},
            **{arg: {"oneOf": [{"type": "string", "enum": quantizer_names},
                               {"type": "object", "required": ["type"]},
                               {"type": "null"}]}
               for arg in ("input_quantizer", "kernel_quantizer", "depthwise_quantizer",
                           "pointwise_quantizer")},
        },
        "oneOf": [{"required": ["type"]}, {"required": ["block"]}],
        "additionalProperties": True,
    }


__all__ = ["ConfigError", "Node", "build_model", "check_nodes", "expand", "import_plugin",
           "layer_json_schema", "load_plugins", "make_layer", "resolve_component"]
