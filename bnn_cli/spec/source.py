"""Reading YAML safely while remembering where every value came from.

Config errors must name the file, line and column of the offending key, so the YAML is
composed into nodes (which carry positions) and converted by hand: every path such as
``("model", "layers", 3, "kernel_quantizer")`` maps to a :class:`Location`. Only YAML's
standard tags are accepted: a tag that would construct a Python object is refused before
anything is built.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bnn_cli.errors import UserError

PathKey = tuple[str | int, ...]

_SAFE_TAGS = {
    "tag:yaml.org,2002:" + t
    for t in ("null", "bool", "int", "float", "str", "binary", "timestamp", "map", "seq",
              "omap", "pairs", "set", "merge", "value")
}


@dataclass(frozen=True)
class Location:
    """Where a value was written: a file position or a command-line override."""

    source: str
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        if self.line is None:
            return self.source
        return f"{self.source}:{self.line}:{self.column}"


@dataclass
class Document:
    """Plain data from YAML plus the location of every value and every key."""

    data: Any
    source: str
    values: dict[PathKey, Location] = field(default_factory=dict)
    keys: dict[PathKey, Location] = field(default_factory=dict)

    def locate(self, path: PathKey, *, key: bool = False) -> Location:
        """The closest known location: the path itself, else its nearest parent."""
        table = self.keys if key else self.values
        for end in range(len(path), -1, -1):
            prefix = tuple(path[:end])
            if prefix in table:
                return table[prefix]
            if prefix in self.values:
                return self.values[prefix]
        return Location(self.source)


def format_path(path: PathKey) -> str:
    """``model.layers[3].kernel_quantizer``."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def _position(node: yaml.Node, source: str) -> Location:
    return Location(source, node.start_mark.line + 1, node.start_mark.column + 1)


class _Converter:
    """Turns composed YAML nodes into Python data, recording locations."""

    def __init__(self, doc: Document):
        self.doc = doc
        self.loader = yaml.SafeLoader("")

    def convert(self, node: yaml.Node, path: PathKey) -> Any:
        self.doc.values[path] = _position(node, self.doc.source)
        if node.tag not in _SAFE_TAGS:
            raise UserError(
                f"{_position(node, self.doc.source)}: {format_path(path)}: YAML tag "
                f"{node.tag!r} is not allowed; configs hold plain data only (nothing in a "
                "config is ever executed). Remove the tag."
            )
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.convert(item, (*path, i)) for i, item in enumerate(node.value)]
        return self.loader.construct_object(node, deep=True)

    def _mapping(self, node: yaml.MappingNode, path: PathKey) -> dict[Any, Any]:
        self.loader.flatten_mapping(node)  # resolves `<<: *anchor` merge keys
        out: dict[Any, Any] = {}
        for key_node, value_node in node.value:
            key = self.convert(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, (str, int, float, bool)) or key is None:
                raise UserError(f"{_position(key_node, self.doc.source)}: {format_path(path)}: "
                                "mapping keys must be plain strings")
            key = str(key)
            if key in out:
                raise UserError(
                    f"{_position(key_node, self.doc.source)}: {format_path((*path, key))}: "
                    "duplicate key; each key may appear once per mapping"
                )
            self.doc.keys[(*path, key)] = _position(key_node, self.doc.source)
            out[key] = self.convert(value_node, (*path, key))
        return out


def parse_yaml(text: str, source: str) -> Document:
    """Parse YAML text into a located :class:`Document` (one YAML document)."""
    doc = Document(data=None, source=source)
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = Location(source, mark.line + 1, mark.column + 1) if mark else Location(source)
        problem = exc.problem or exc.context or "invalid YAML"
        raise UserError(f"{where}: YAML syntax error: {problem}. Check the indentation and "
                        "quoting around this position.") from None
    except yaml.YAMLError as exc:  # e.g. several documents in one file
        raise UserError(f"{source}: YAML error: {exc}") from None
    if node is None:
        raise UserError(f"{source}: the file is empty; a config needs at least a `model:` "
                        "section (see configs/quickstart.yaml)")
    doc.data = _Converter(doc).convert(node, ())
    return doc


def load_yaml(path: str | Path) -> Document:
    """Read and parse a YAML file, with errors a user can act on."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; check the path (configs live in configs/, "
                        "e.g. configs/quickstart.yaml)") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a YAML config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the file: {exc}") from None
    return parse_yaml(text, str(path))


# ---------------------------------------------------------------------------------------
# Command-line overrides: KEY.PATH=VALUE
# ---------------------------------------------------------------------------------------


def parse_override_path(text: str) -> PathKey:
    """``model.layers[3].filters`` -> ``("model", "layers", 3, "filters")``."""
    path: list[str | int] = []
    for part in text.split("."):
        name, _, rest = part.partition("[")
        if name:
            path.append(name)
        while rest:
            index, _, rest = rest.partition("]")
            if not index.lstrip("-").isdigit():
                raise UserError(f"override {text!r}: list index {index!r} is not a number")
            path.append(int(index))
            rest = rest.removeprefix("[")
        if not name and not path:
            raise UserError(f"override {text!r}: empty key")
    return tuple(path)


def apply_overrides(doc: Document, overrides: list[str]) -> None:
    """Apply ``KEY.PATH=VALUE`` overrides in order; values are parsed as YAML."""
    for i, item in enumerate(overrides, start=1):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"override {item!r} is not KEY.PATH=VALUE (for example "
                            "training.epochs=3)")
        path = parse_override_path(key.strip())
        value = parse_yaml(raw or "null", f"override #{i}").data if raw.strip() else None
        _set_path(doc, path, value, item)
        # The replaced value's parts were written in the file; an error in the new value
        # must point at the override, not at what used to be there.
        for table in (doc.values, doc.keys):
            for stale in [k for k in table if len(k) > len(path) and k[:len(path)] == path]:
                del table[stale]
        doc.values[path] = Location(f"command-line override {item!r}")


def _set_path(doc: Document, path: PathKey, value: Any, item: str) -> None:
    if not isinstance(doc.data, dict):
        doc.data = {}
    parent: Any = doc.data
    for depth, part in enumerate(path[:-1]):
        parent = _child(parent, part, path[: depth + 1], item, create=True)
    last = path[-1]
    if isinstance(parent, list):
        if not isinstance(last, int) or not -len(parent) <= last < len(parent):
            raise UserError(f"override {item!r}: {format_path(path)} does not exist "
                            f"(the list has {len(parent)} items)")
    elif not isinstance(parent, dict) or isinstance(last, int):
        raise UserError(f"override {item!r}: {format_path(path[:-1])} is not a mapping")
    parent[last] = value


def _child(parent: Any, part: str | int, path: PathKey, item: str, *, create: bool) -> Any:
    if isinstance(parent, dict) and isinstance(part, str):
        if part not in parent:
            if not create or len(path) > 1:
                raise UserError(f"override {item!r}: {format_path(path)} does not exist; "
                                f"existing keys there: {', '.join(map(str, parent)) or 'none'}")
            parent[part] = {}  # a top-level section the file left to its defaults
        return parent[part]
    if isinstance(parent, list) and isinstance(part, int):
        if -len(parent) <= part < len(parent):
            return parent[part]
        raise UserError(f"override {item!r}: {format_path(path)} does not exist (the list "
                        f"has {len(parent)} items)")
    raise UserError(f"override {item!r}: {format_path(path)} does not exist")
