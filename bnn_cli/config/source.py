"""Reading YAML safely while remembering where every value came from.

Config errors must name the file, line and column of the offending key, so the YAML is
composed into nodes (which carry positions) and converted by hand: every path such as
``("model", "layers", 3, "kernel_quantizer")`` maps to a :class:`Location`. Only YAML's
standard tags are accepted: a tag that would construct a Python object is refused before
anything is built.

Input that would cost far more memory or time than any config needs is refused with its
location, before the cost is paid: files and override values over :data:`MAX_YAML_BYTES`
(before parsing), nesting deeper than :data:`MAX_DEPTH`, and aliases that expand to more
than :data:`MAX_VALUES` values (an "alias bomb": ten nested anchors in 500 bytes expand to
billions of values).
"""

from __future__ import annotations

import copy
import gc
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from bnn_cli.errors import UserError

PathKey = tuple[str | int, ...]

# The largest shipped config is 2.5 KB; a megabyte of YAML is data, not a config.
MAX_YAML_BYTES = 1 << 20
# Scalars, lists and mappings (keys included) once aliases are expanded: each use of an
# alias counts everything its anchor holds again. A 1 MiB file holds at most ~520,000.
MAX_VALUES = 1_000_000
# Levels of nesting (the top level is 1). Configs use about 8; the limit keeps PyYAML's
# recursive composer and the converter far from Python's recursion limit, and the
# paths that locations are recorded under short.
MAX_DEPTH = 64

_MERGE_TAG = "tag:yaml.org,2002:merge"
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


def _where(mark: yaml.Mark, source: str) -> Location:
    return Location(source, mark.line + 1, mark.column + 1)


def _position(node: yaml.Node, source: str) -> Location:
    return _where(node.start_mark, source)


def _check_size(size: int, what: str, *, known: bool = True) -> None:
    """Refuse YAML over :data:`MAX_YAML_BYTES`: parsing costs ~300 bytes of memory and
    ~5 microseconds per byte, so a stray data file would take minutes and gigabytes.
    ``known=False``: only the first ``size`` bytes were read (a pipe has no size)."""
    if size > MAX_YAML_BYTES:
        amount = f"{size / 2**20:.1f} MiB ({size:,} bytes)" if known else "over 1 MiB"
        raise UserError(
            f"{what} is {amount}; config files and override values may be at most "
            f"{MAX_YAML_BYTES // 2**20} MiB ({MAX_YAML_BYTES:,} bytes). Configs are a few KB: "
            "check that this is the config you meant, and keep data (lists of numbers, file "
            "lists) in files of their own."
        )


class _Extent(NamedTuple):
    """What a node becomes once its aliases are expanded."""

    values: int  # scalars, lists, mappings and keys, capped at MAX_VALUES + 1
    depth: int  # levels of nesting, the node itself included


class _AliasUse(NamedTuple):
    anchor: str
    mark: yaml.Mark  # where ``*anchor`` is written


class _Loader(yaml.SafeLoader):
    """PyYAML's safe loader, used to compose nodes only, with three guards.

    Each node's extent is computed as it is composed (its children are done by then), so
    sizes are known without expanding anything. An alias becomes a shallow copy of its
    anchor's node: the copy shares the anchor's children (nothing is expanded) but is a
    node of its own, which records where ``*name`` was written. Merge keys are flattened
    here, before any alias can copy a mapping, because flattening edits the node's list of
    pairs in place, and copies share that list.
    """

    def __init__(self, text: str, source: str):
        super().__init__(text)
        self.source = source
        self.depth = 0
        self.extents: dict[yaml.Node, _Extent] = {}
        self.alias_uses: dict[yaml.Node, _AliasUse] = {}
        self.merged: dict[yaml.Node, int] = {}  # mapping -> pairs that merge keys put first
        self.merged_pairs = 0  # in all mappings so far

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        if self.check_event(yaml.AliasEvent):
            return self._alias(parent, index)
        if self.depth >= MAX_DEPTH:
            where = _where(self.peek_event().start_mark, self.source)
            raise UserError(f"{where}: values are nested more than {MAX_DEPTH} levels deep; "
                            "a config needs a few levels: flatten this part of the file")
        self.depth += 1
        try:
            node = super().compose_node(parent, index)
        finally:
            self.depth -= 1
        if isinstance(node, yaml.MappingNode):
            self._flatten(node)
        self.extents[node] = self._extent(node)
        return node

    def _alias(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        event = self.peek_event()
        target = super().compose_node(parent, index)  # the anchor's node, or an error
        if target not in self.extents:  # still being composed: the alias is inside it
            raise UserError(
                f"{_where(event.start_mark, self.source)}: the alias *{event.anchor} is used "
                f"inside its own anchor &{event.anchor}, so the value would contain itself "
                "without end; use an anchor defined elsewhere, or write the value out"
            )
        use = copy.copy(target)
        self.extents[use] = self.extents[target]
        self.alias_uses[use] = _AliasUse(event.anchor, event.start_mark)
        if target in self.merged:
            self.merged[use] = self.merged[target]
        return use

    def _flatten(self, node: yaml.MappingNode) -> None:
        """Resolve ``<<: *anchor`` merge keys by YAML's rule: the merged mappings' pairs
        go first, each key once (an earlier mapping wins), and keys written in the mapping
        itself win over them (in the converter). Done here, not by PyYAML's
        ``flatten_mapping``, whose precedence among merged mappings depends on the release
        (and in 6.0.4 on whether two keys happen to be the same string object)."""
        merged: list[tuple[yaml.Node, yaml.Node]] = []
        written: list[tuple[yaml.Node, yaml.Node]] = []
        seen: set[Any] = set()
        for key, value in node.value:
            if key.tag == "tag:yaml.org,2002:value":
                key.tag = "tag:yaml.org,2002:str"  # a `=` key, as PyYAML reads it
            if key.tag != _MERGE_TAG:
                written.append((key, value))
                continue
            before = len(merged)
            for mapping in self._merged_mappings(value):  # composed, so already flat
                for pair in mapping.value:
                    name = (pair[0].tag, pair[0].value) if isinstance(
                        pair[0], yaml.ScalarNode) else pair[0]
                    if name not in seen:
                        seen.add(name)
                        merged.append(pair)
            self._count_merged(key, len(merged) - before)
        if merged:
            node.value = merged + written
            self.merged[node] = len(merged)

    def _merged_mappings(self, value: yaml.Node) -> list[yaml.MappingNode]:
        mappings = value.value if isinstance(value, yaml.SequenceNode) else [value]
        for mapping in mappings:
            if not isinstance(mapping, yaml.MappingNode):
                raise UserError(f"{_position(mapping, self.source)}: a merge key (`<<: *name`) "
                                f"takes a mapping or a list of mappings, not a {mapping.id}")
        return mappings

    def _count_merged(self, key: yaml.Node, pairs: int) -> None:
        """Every merged pair is a copy: refuse to make more than a config could hold (an
        accepted config converts each at least once, as a key)."""
        if self.merged_pairs + pairs > MAX_VALUES:
            raise UserError(f"{_position(key, self.source)}: this merge key takes the config "
                            f"over {MAX_VALUES:,} merged keys (each merge copies every key of "
                            "the mappings it merges); merge fewer or smaller mappings")
        self.merged_pairs += pairs

    def _extent(self, node: yaml.Node) -> _Extent:
        if isinstance(node, yaml.SequenceNode):
            children = [self.extents[item] for item in node.value]
        elif isinstance(node, yaml.MappingNode):
            children = [self.extents[n] for pair in node.value for n in pair]
        else:
            return _Extent(1, 1)
        values = 1 + sum(c.values for c in children)
        depth = 1 + max((c.depth for c in children), default=0)
        return _Extent(min(values, MAX_VALUES + 1), depth)


def _refuse_expansion(loader: _Loader, root: yaml.Node) -> None:
    """Refuse a document whose aliases expand past the limits, before converting it (the
    cost would be paid while converting): name the first alias, in document order, that
    takes it over. Aliases inside an anchor that fits fit too, so that alias is one
    written where it is expanded, not one inside another anchor."""
    extent = loader.extents[root]
    if extent.values > MAX_VALUES:
        node, path, _ = _first_over_budget(loader, root, (), 0)
        size = loader.extents[node].values
        amount = f"more than {MAX_VALUES:,}" if size > MAX_VALUES else f"{size:,}"
        raise _expansion_error(
            loader, node, path,
            f"expands to {amount} values, which takes the config over the limit of "
            f"{MAX_VALUES:,} (each use of an alias copies everything its anchor holds, with "
            "the aliases in it expanded too); a config needs far fewer: use the anchor fewer "
            "times, or nest aliases less deeply")
    if extent.depth > MAX_DEPTH:
        node, path = _first_too_deep(loader, root, (), 1)
        raise _expansion_error(
            loader, node, path,
            f"nests values more than {MAX_DEPTH} levels deep once expanded (the anchor's "
            "nesting adds to the nesting where it is used); a config needs a few levels: "
            "nest aliases less deeply")


def _children(node: yaml.Node, path: PathKey) -> Iterator[tuple[yaml.Node, PathKey]]:
    """A node's children in the order they are converted, with their paths (a mapping's
    keys are converted at the mapping's own path)."""
    if isinstance(node, yaml.SequenceNode):
        yield from ((item, (*path, i)) for i, item in enumerate(node.value))
    elif isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            yield key_node, path
            yield value_node, (*path, str(key_node.value))


def _first_over_budget(loader: _Loader, node: yaml.Node, path: PathKey,
                       before: int) -> tuple[yaml.Node, PathKey, int]:
    """Within ``node``, which takes the count from ``before`` over the limit, the first
    alias (or, without aliases, value) that does."""
    if node in loader.alias_uses or isinstance(node, yaml.ScalarNode):
        return node, path, before
    count = before + 1
    for child, child_path in _children(node, path):
        size = loader.extents[child].values
        if count + size > MAX_VALUES:
            return _first_over_budget(loader, child, child_path, count)
        count += size
    return node, path, before  # not reached: the children add up to the node's extent


def _first_too_deep(loader: _Loader, node: yaml.Node, path: PathKey,
                    level: int) -> tuple[yaml.Node, PathKey]:
    """Within ``node`` (at nesting ``level``), which reaches past MAX_DEPTH, the first
    alias that does (the composer refused any deeper nesting written out)."""
    if node in loader.alias_uses:
        return node, path
    for child, child_path in _children(node, path):
        if level + loader.extents[child].depth > MAX_DEPTH:
            return _first_too_deep(loader, child, child_path, level + 1)
    return node, path  # not reached


def _expansion_error(loader: _Loader, node: yaml.Node, path: PathKey,
                     problem: str) -> UserError:
    use = loader.alias_uses.get(node)
    if use is None:  # only if a file under the size limit could hold that much
        return UserError(f"{_position(node, loader.source)}: {format_path(path)}: the config "
                         f"holds more than {MAX_VALUES:,} values; configs need far fewer")
    return UserError(f"{_where(use.mark, loader.source)}: {format_path(path)}: the alias "
                     f"*{use.anchor} {problem}")


class _Converter:
    """Turns composed YAML nodes into Python data, recording locations."""

    def __init__(self, doc: Document, loader: _Loader):
        self.doc = doc
        self.loader = loader

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
        return self._scalar(node, path)

    def _scalar(self, node: yaml.ScalarNode, path: PathKey) -> Any:
        try:
            return self.loader.construct_object(node, deep=True)
        except (yaml.YAMLError, ValueError, TypeError) as exc:  # `!!int abc`, bad dates
            reason = getattr(exc, "problem", None) or exc
            text = node.value if len(node.value) <= 40 else node.value[:37] + "..."
            tag = node.tag.replace("tag:yaml.org,2002:", "!!")
            raise UserError(f"{_position(node, self.doc.source)}: {format_path(path)}: cannot "
                            f"read {text!r} as {tag}: {reason}; fix the value or remove the "
                            "tag") from None
        finally:
            # PyYAML caches every constructed node; nothing here is constructed twice.
            self.loader.constructed_objects.pop(node, None)

    def _mapping(self, node: yaml.MappingNode, path: PathKey) -> dict[Any, Any]:
        merged = self.loader.merged.get(node, 0)
        out: dict[Any, Any] = {}
        overridable: set[str] = set()  # keys whose value came from a merge key
        for i, (key_node, value_node) in enumerate(node.value):
            key = self._key(key_node, path)
            if key in out and i < merged:
                continue  # merged twice (`true` and `True`): the earlier mapping wins
            if key in out and key not in overridable:
                raise UserError(
                    f"{_position(key_node, self.doc.source)}: {format_path((*path, key))}: "
                    "duplicate key; each key may appear once per mapping"
                )
            if key in out:  # a merged value, overridden: forget where its parts were
                for stale in _paths_below((*path, key), out[key]):
                    self.doc.values.pop(stale, None)
                    self.doc.keys.pop(stale, None)
            (overridable.add if i < merged else overridable.discard)(key)
            self.doc.keys[(*path, key)] = _position(key_node, self.doc.source)
            out[key] = self.convert(value_node, (*path, key))
        return out

    def _key(self, node: yaml.Node, path: PathKey) -> str:
        key = self.convert(node, path) if isinstance(node, yaml.ScalarNode) else None
        if not isinstance(key, (str, int, float, bool)) or key is None:
            raise UserError(f"{_position(node, self.doc.source)}: {format_path(path)}: "
                            "mapping keys must be plain strings")
        return str(key)


def parse_yaml(text: str, source: str) -> Document:
    """Parse YAML text into a located :class:`Document` (one YAML document)."""
    _check_size(len(text.encode("utf-8", "surrogatepass")), f"{source}: the YAML text")
    # CPython's cyclic GC keeps rescanning the growing node tree, which made loading
    # superlinear: a 1.6 MB list took 11.1 s with it and 6.8 s without, and 4x the size
    # cost 4.7x with it, 3.9x without. Parsing makes no garbage cycles worth collecting
    # meanwhile (a loader that an error left behind goes at the next collection).
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        loader, node = _compose(text, source)
        if node is None:
            raise UserError(f"{source}: the file is empty; a config needs at least a "
                            "`model:` section (see configs/quickstart.yaml)")
        _refuse_expansion(loader, node)
        doc = Document(data=None, source=source)
        doc.data = _Converter(doc, loader).convert(node, ())
        loader.dispose()  # breaks the loader's reference cycles, so it goes at once
        return doc
    finally:
        if gc_was_enabled:
            gc.enable()


def _compose(text: str, source: str) -> tuple[_Loader, yaml.Node | None]:
    try:
        loader = _Loader(text, source)  # its reader refuses unprintable characters at once
        return loader, loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = _where(mark, source) if mark else Location(source)
        problem = exc.problem or exc.context or "invalid YAML"
        line = _culprit_line(text, exc)
        if line is not None and mark is not None and line != mark.line:
            where = Location(source, line + 1, _indent(text.splitlines()[line]) + 1)
            problem += f" (noticed at line {mark.line + 1})"
        raise UserError(f"{where}: YAML syntax error: {problem}. Check the indentation and "
                        "quoting around this position.") from None
    except yaml.YAMLError as exc:  # e.g. several documents in one file
        raise UserError(f"{source}: YAML error: {exc}") from None


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _culprit_line(text: str, exc: yaml.MarkedYAMLError) -> int | None:
    """The 0-based line a syntax error is about, where that is not the line PyYAML
    noticed it on: a key without its ':' (the scanner reads on to the next line), or a
    line whose indentation differs from its neighbours' while the next one's agrees with
    them (PyYAML takes the odd line as the start of a block and objects to the next)."""
    if exc.problem_mark is None:
        return None
    if exc.context == "while scanning a simple key" and exc.context_mark is not None:
        return exc.context_mark.line
    if not (exc.problem or "").startswith(("expected <block end>",
                                           "mapping values are not allowed")):
        return None
    lines = text.splitlines()
    content = [i for i, ln in enumerate(lines)
               if ln.strip() and not ln.lstrip().startswith("#")]
    here = exc.problem_mark.line
    if here not in content or content.index(here) == 0:
        return None
    at = content.index(here)
    indent = _indent(lines[here])
    before = content[at - 1]
    if exc.problem.startswith("mapping") and _keyless(lines[before]):
        return before  # `epochs 20` above `batch_size: 32`: one key, read on to the ':'
    # Siblings of the noticed line: the line before the odd one unless it opens a block
    # (a parent), the line after unless the noticed line opens one (a child).
    siblings = [content[j] for j, parent in ((at - 2, at - 2), (at + 1, at))
                if 0 <= j < len(content) and not _opens_block(lines[content[parent]])]
    if _indent(lines[before]) != indent and any(_indent(lines[j]) == indent
                                                for j in siblings):
        return before
    return None


def _keyless(line: str) -> bool:
    """A line that is neither ``key: value``, ``key:``, a list item nor flow: a key
    that lost its ':' (or text that continues a value: the line above says which)."""
    text = line.split(" #")[0].strip()
    return not (":" in text or text.startswith(("-", "[", "{", "'", '"')))


def _opens_block(line: str) -> bool:
    """``key:`` or ``- key:`` with nothing after (but a comment): a block follows."""
    return line.split(" #")[0].rstrip().endswith(":")


def load_yaml(path: str | Path) -> Document:
    """Read and parse a YAML file, with errors a user can act on."""
    path = Path(path)
    try:
        with path.open(encoding="utf-8") as file:
            # Checked before reading: a huge file is refused without being read.
            _check_size(os.fstat(file.fileno()).st_size, f"{path}: the file")
            # A pipe or a /proc file has no size to stat: read one past the limit.
            text = file.read(MAX_YAML_BYTES + 1)
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; check the path (configs live in configs/, "
                        "e.g. configs/quickstart.yaml)") from None
    except IsADirectoryError:
        raise UserError(f"{path}: is a directory, not a YAML config file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot read the file: {exc}") from None
    _check_size(len(text.encode("utf-8", "surrogatepass")), f"{path}: the file", known=False)
    return parse_yaml(text, str(path))


# ---------------------------------------------------------------------------------------
# extends: a config written as changes to another
# ---------------------------------------------------------------------------------------

MAX_EXTENDS = 8  # files in one chain


def load_config_document(path: str | Path, _chain: tuple[Path, ...] = ()) -> Document:
    """A config file, with ``extends: OTHER.yaml`` (relative to the file) resolved: this
    file's mappings merge into the other's, key by key; any other value replaces the
    other's. Every value keeps the location of the file that wrote it."""
    doc = load_yaml(path)
    if not isinstance(doc.data, dict) or "extends" not in doc.data:
        return doc
    base = doc.data["extends"]
    where = doc.locate(("extends",))
    if not isinstance(base, str) or not base.strip():
        raise UserError(f"{where}: extends: names the config file this one changes (a path "
                        f"relative to {Path(path).name}'s folder), not {base!r}")
    base_path = (Path(path).parent / base).resolve()
    chain = (*_chain, Path(path).resolve())
    if base_path in chain:
        raise UserError(f"{where}: extends: {base!r} leads back to "
                        f"{Path(path).name}: the files extend each other in a circle")
    if len(chain) >= MAX_EXTENDS:
        raise UserError(f"{where}: extends: more than {MAX_EXTENDS} files extend one "
                        "another; write the config in fewer steps")
    try:
        merged = load_config_document(base_path, chain)
    except UserError as exc:
        raise UserError(f"{exc} (the config that {where} extends)") from None
    merged.source = doc.source
    _merge_into(merged, doc, {k: v for k, v in doc.data.items() if k != "extends"}, ())
    return merged


def _merge_into(target: Document, child: Document, mapping: dict, path: PathKey) -> None:
    node = target.data
    for part in path:
        node = node[part]
    for key, value in mapping.items():
        here = (*path, key)
        if isinstance(value, dict) and isinstance(node.get(key), dict):
            _merge_into(target, child, value, here)
        else:
            for table in (target.values, target.keys):  # the replaced value's places
                for stale in [p for p in table if p[:len(here)] == here]:
                    del table[stale]
            node[key] = value
            for table, own in ((target.values, child.values), (target.keys, child.keys)):
                table.update({p: loc for p, loc in own.items() if p[:len(here)] == here})
        if here in child.keys:
            target.keys[here] = child.keys[here]


def flattened_text(path: str | Path) -> str:
    """The config file's text; with ``extends``, the merged config as one file (what a
    run directory keeps, so that it does not depend on the other files staying put)."""
    text = Path(path).read_text(encoding="utf-8")
    doc = load_config_document(path)
    if doc.data == load_yaml(path).data:
        return text
    return (f"# {Path(path).name} with its `extends:` resolved (written by bnn)\n"
            + yaml.safe_dump(doc.data, sort_keys=False, allow_unicode=True))


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
        _check_size(len(raw.encode("utf-8", "surrogatepass")),
                    f"override #{i} ({key.strip()}=...): the value")
        value = parse_yaml(raw or "null", f"override #{i}").data if raw.strip() else None
        path, replaced = set_path(doc, path, value, item)
        # The replaced value's parts were written in the file; an error in the new value
        # must point at the override, not at what used to be there.
        for stale in _paths_below(path, replaced):
            doc.values.pop(stale, None)
            doc.keys.pop(stale, None)
        doc.values[path] = Location(f"command-line override {item!r}")


def _paths_below(path: PathKey, value: Any) -> Iterator[PathKey]:
    """Every path strictly inside ``value`` (found at ``path``).

    Locations are recorded only for paths in the data, so walking the replaced value finds
    every stale one at the cost of that value's size, where scanning the tables would cost
    the whole file's size for each override."""
    stack = [(path, value)]
    while stack:
        prefix, node = stack.pop()
        if isinstance(node, dict):
            children: Any = node.items()
        elif isinstance(node, list):
            children = enumerate(node)
        else:
            continue
        for part, child in children:
            sub = (*prefix, part)
            yield sub
            stack.append((sub, child))


def set_path(doc: Document, path: PathKey, value: Any, item: str) -> tuple[PathKey, Any]:
    """Set ``path`` to ``value``; return the path (list indices made non-negative, as the
    recorded paths are) and the value it replaced (``None`` if it was new)."""
    if not isinstance(doc.data, dict):
        doc.data = {}
    parent: Any = doc.data
    real: list[str | int] = []
    for depth, part in enumerate(path[:-1]):
        child = _child(parent, part, path[: depth + 1], item, create=True)
        real.append(part % len(parent) if isinstance(part, int) else part)  # index checked
        parent = child
    last = path[-1]
    if isinstance(parent, list):
        if not isinstance(last, int) or not -len(parent) <= last < len(parent):
            raise UserError(f"override {item!r}: {format_path(path)} does not exist "
                            f"(the list has {len(parent)} items)")
        last %= len(parent)
    elif not isinstance(parent, dict) or isinstance(last, int):
        raise UserError(f"override {item!r}: {format_path(path[:-1])} is not a mapping")
    replaced = parent.get(last) if isinstance(parent, dict) else parent[last]
    parent[last] = value
    return (*real, last), replaced


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
