"""The model section as a graph: defaults, blocks and ``repeat`` -> one node per layer.

:func:`expand` flattens ``model.layers`` into :class:`Node` s with final names and
inputs, reporting what is structurally wrong (unknown blocks, missing parameters, names
used twice) with the config's file/line/key path. It knows nothing of Keras; the
registry is consulted by :mod:`bnn_cli.config.checks`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from bnn_cli.config.schema import Config, Problem, ensure_valid
from bnn_cli.config.source import PathKey, format_path
from bnn_cli.errors import did_you_mean

SPEC_KEYS = {"type", "name", "inputs", "repeat"}
"""Keys of a layer spec that are not layer arguments."""

_PARAM = re.compile(r"\$\{(\w+)\}")
# A layer name is a TensorFlow name scope: no leading '_' or '-', no spaces or slashes.
LAYER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


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


@dataclass
class Graph:
    """The expanded model: input names, nodes in dependency order, output names."""

    inputs: list[str]
    nodes: list[Node]
    outputs: list[str]


class _Expander:
    def __init__(self, config: Config, input_names: list[str]):
        self.config = config
        self.model = config.spec.model
        self.nodes: list[Node] = []
        self.problems: list[Problem] = []
        # Every name taken, with the path of the spec that chose it (None: generated).
        self.taken: dict[str, PathKey | None] = {name: None for name in input_names}
        self.prefixes: dict[str, PathKey | None] = {}
        self.counters: dict[str, int] = {}

    def problem(self, path: PathKey, message: str, *, key: bool = False) -> None:
        self.problems.append(self.config.problem(path, message, key=key))

    def claim(self, table: dict[str, PathKey | None], base: str, explicit: PathKey | None,
              what: str) -> str:
        """``base`` if free; a generated name gets a counter, a written one must be free."""
        if explicit is not None:
            if base in table:
                other = table[base]
                where = (f"already the name of the layer at "
                         f"{self.config.document.locate(other)} ({format_path(other)})"
                         if other is not None else "already a generated or input name")
                self.problem((*explicit, "name"), f"{what} {base!r} is {where}; each name "
                             "may be used once, so that `inputs` can refer to it", key=True)
            table[base] = explicit
            return base
        name = base
        while name in table:
            self.counters[base] = self.counters.get(base, 0) + 1
            name = f"{base}_{self.counters[base]}"
        table[name] = None
        return name

    def local_name(self, spec: dict, path: PathKey) -> str | None:
        local = spec.get("name")
        if local is None:
            return None
        if not isinstance(local, str) or not LAYER_NAME.fullmatch(local):
            self.problem((*path, "name"), f"name {local!r} is not a valid layer name: use "
                         "letters, digits, '_', '.' and '-', starting with a letter or digit")
            return None
        return local

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
        local = self.local_name(spec, path)
        for r in range(repeat):
            suffix = f"_{r + 1}" if repeat > 1 else ""
            if "block" in spec:
                current = self.block_use(spec, path, current, scope, prefix, context, suffix,
                                         local)
            else:
                current = self.layer(spec, path, current, scope, prefix, context, suffix,
                                     local)
        if local is not None and current is not None:
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
        return [scope.get(x, f"?{x}") for x in items]  # "?name": checked in checks

    def layer(self, spec: dict, path: PathKey, current: str | None, scope: dict[str, str],
              prefix: str, context: str, suffix: str, local: str | None) -> str | None:
        kind = spec.get("type")
        if not isinstance(kind, str):
            self.problem(path, "a layer needs `type: LayerName` (e.g. QuantDense) or "
                               "`block: BLOCK_NAME`")
            return current
        base = f"{prefix}{local or _snake(kind)}{suffix}"
        name = self.claim(self.taken, base, path if local else None, "layer name")
        args = {**self.model.defaults.get(kind, {}),
                **{k: v for k, v in spec.items() if k not in SPEC_KEYS}}
        arg_paths = {k: (*path, k) if k in spec else ("model", "defaults", kind, k)
                     for k in args}
        node = Node(name=name, type=kind, args=args, path=path, context=context,
                    inputs=self.resolve_inputs(spec, path, current, scope), arg_paths=arg_paths)
        self.nodes.append(node)
        return name

    def block_use(self, spec: dict, path: PathKey, current: str | None, scope: dict[str, str],
                  prefix: str, context: str, suffix: str, local: str | None) -> str | None:
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
        use = self.claim(self.prefixes, f"{prefix}{local or block_name}{suffix}",
                         path if local else None, "block name")
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
                             local_scope["input"], local_scope, f"{use}_", inner_context)

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


def input_names(config: Config) -> list[str]:
    inputs = config.spec.model.inputs
    return [s.name for s in inputs] if inputs else ["input"]


def expand(config: Config) -> Graph:
    """Flatten the model section into nodes with resolved names and inputs."""
    names = input_names(config)
    expander = _Expander(config, names)
    scope = {name: name for name in names}
    last = None
    for i, spec in enumerate(config.spec.model.layers):
        first = names[0] if i == 0 else last
        last = expander.item(spec, ("model", "layers", i), first, scope, "", "")
    ensure_valid(expander.problems)
    # Names written in the config (top-level or inside blocks) resolve to nodes.
    known = {n.name for n in expander.nodes} | set(names)
    for node in expander.nodes:
        node.inputs = [_resolve_ref(ref, scope, known) for ref in node.inputs]
    outputs = config.spec.model.outputs or ([last] if last else [])
    outputs = [_resolve_ref(o if o in scope or o in known else f"?{o}", scope, known)
               for o in outputs]
    return Graph(names, expander.nodes, outputs)


def _resolve_ref(ref: str, scope: dict[str, str], known: set[str]) -> str:
    if ref.startswith("?"):
        name = ref[1:]
        return scope.get(name, name if name in known else ref)
    return ref


def cycles(config: Config, nodes: list[Node]) -> list[Problem]:
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


def topological(nodes: list[Node], inputs: list[str]) -> list[Node]:
    """The nodes in an order where each comes after its inputs (the graph is acyclic)."""
    ready = set(inputs)
    pending = list(nodes)
    ordered: list[Node] = []
    while pending:
        progress = [n for n in pending if all(r in ready for r in n.inputs)]
        if not progress:  # unreachable for a checked graph; keep the loop finite anyway
            break
        for n in progress:
            ordered.append(n)
            ready.add(n.name)
        pending = [n for n in pending if n.name not in ready]
    return ordered
