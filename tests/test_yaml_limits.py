"""Bad input that would cost memory or time is refused fast, with its file and line.

The limits live in :mod:`bnn_cli.config.source`: ``MAX_YAML_BYTES`` (1 MiB, checked before
parsing), ``MAX_VALUES`` (1,000,000 values once aliases are expanded) and ``MAX_DEPTH``
(64 levels). Inputs are generated here, not shipped: an alias bomb is tiny, but an
over-size file is not.
"""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bnn_cli.cli import main
from bnn_cli.config import source
from bnn_cli.config.schema import load_config
from bnn_cli.config.source import (
    MAX_DEPTH,
    MAX_YAML_BYTES,
    Document,
    Location,
    apply_overrides,
    load_yaml,
    parse_yaml,
)
from bnn_cli.errors import UserError

GOOD = """\
model:
  inputs: [{shape: [4]}]
  layers: [{type: Dense, units: 2}]
"""


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def bomb(levels: int = 10) -> str:
    """Ten anchors, each a list of nine aliases to the one before: 9**10 values."""
    lines = ["model:", "  inputs: [{shape: [4]}]", "  layers: [{type: Dense, units: 2}]",
             "l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


# Runs in a child process, so that if the bomb ever expands again it takes the child's
# address space, capped at 1 GiB above what the imports took, and not the test run's.
_CHILD = """
import json, resource, sys
from bnn_cli.cli import main
from bnn_cli.registry import load_builtins
import bnn_cli.assemble.report  # imports TensorFlow: not part of what is measured
from bnn_cli.config import source
load_builtins()
# The work done, counted: YAML nodes composed, node sizes summed and values converted.
counts = {"composed": 0, "extents": 0, "converted": 0}
def counting(name, function):
    def counted(*args, **kwargs):
        counts[name] += 1
        return function(*args, **kwargs)
    return counted
source._Loader.compose_node = counting("composed", source._Loader.compose_node)
source._Loader._extent = counting("extents", source._Loader._extent)
source._Converter.convert = counting("converted", source._Converter.convert)
pages = int(open("/proc/self/statm").read().split()[0])
limit = pages * resource.getpagesize() + (1 << 30)
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
code = main(["check", sys.argv[1]])
grown_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({**counts, "grown_mib": grown_kib / 1024}))
sys.exit(code)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses /proc and RLIMIT_AS")
def test_alias_bomb_is_refused_fast_without_memory(tmp_path):
    path = tmp_path / "bomb.yaml"
    path.write_text(bomb())
    assert path.stat().st_size < 3000
    result = subprocess.run([sys.executable, "-c", _CHILD, str(path)], capture_output=True,
                            text=True, timeout=300, cwd=tmp_path)
    # 2 is a user error; a MemoryError would be 1, the kernel's kill -9 is -9.
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    # l0..l5 expand to 672,609 values together and l6 alone to 5.4 million: the alias
    # that takes the config over 1,000,000 is the first *l5 in l6 (line 10).
    assert f"error: {path}:10:" in result.stderr, result.stderr
    assert "the alias *l5 expands to" in result.stderr
    assert "over the limit of 1,000,000" in result.stderr
    measured = json.loads(result.stdout.strip().splitlines()[-1])
    # Work in proportion to the file (about a hundred nodes), not to the 9**10 values its
    # aliases stand for: refused before a single value is converted.
    assert 50 < measured["composed"] < 500, measured
    assert measured["extents"] <= measured["composed"], measured
    assert measured["converted"] == 0, measured
    assert measured["grown_mib"] < 200, measured


def test_the_alias_that_crosses_the_budget_is_named(monkeypatch):
    # Every value counts, keys included, and each alias use counts all its anchor holds:
    # the mapping, `a`, the list and 7 numbers are 10; `b`, its list, 11 uses of 8 are 90.
    monkeypatch.setattr(source, "MAX_VALUES", 100)
    anchor = "a: &a [1, 2, 3, 4, 5, 6, 7]\n"
    doc = parse_yaml(anchor + "b: [" + ", ".join(["*a"] * 11) + "]\n", "at.yaml")
    assert doc.data["b"][10] == [1, 2, 3, 4, 5, 6, 7]
    text = anchor + "b: [" + ", ".join(["*a"] * 12) + "]\n"
    with pytest.raises(UserError) as exc:
        parse_yaml(text, "over.yaml")
    column = text.splitlines()[1].rindex("*a") + 1
    assert str(exc.value).startswith(f"over.yaml:2:{column}: b[11]: the alias *a expands to "
                                     "8 values")


def test_recursive_and_deep_aliases_are_refused_with_their_line():
    with pytest.raises(UserError, match=r"^r\.yaml:2:12: the alias \*a is used inside its "):
        parse_yaml("x: 1\na: &a {b: [*a]}\n", "r.yaml")
    level = "[" * 40 + "{}" + "]" * 40  # 41 levels; the second use reaches past 64
    with pytest.raises(UserError, match=r"^d\.yaml:2:44: b\[0\]\[0\].*the alias \*a nests"):
        parse_yaml(f"a: &a {level}\nb: {level.replace('{}', '*a')}\n", "d.yaml")


def test_nesting_limit_is_exact():
    def nested(levels: int) -> str:  # the top-level mapping is one level
        return "a: " + "[" * (levels - 1) + "]" * (levels - 1) + "\n"

    parse_yaml(nested(MAX_DEPTH), "ok.yaml")
    with pytest.raises(UserError, match=f"^deep.yaml:1:{MAX_DEPTH + 3}: values are nested"):
        parse_yaml(nested(MAX_DEPTH + 1), "deep.yaml")


def test_oversize_file_is_refused_before_it_is_parsed(tmp_path, capsys, monkeypatch):
    path = tmp_path / "data.yaml"
    with path.open("wb") as f:
        f.truncate(20 << 20)  # sparse: 20 MiB that take no disk
    # Its exact size can only come from the file system: reading stops at the limit.

    def never(*args, **kwargs):
        raise AssertionError("an over-size file must not be read or parsed")

    monkeypatch.setattr(source, "_Loader", never)
    code, _, err = run_cli(capsys, "check", str(path))
    assert code == 2, err
    assert f"error: {path}: the file is 20.0 MiB (20,971,520 bytes)" in err
    assert "may be at most 1 MiB (1,048,576 bytes)" in err
    assert "Traceback" not in err


def test_size_limit_is_exact(tmp_path):
    path = tmp_path / "padded.yaml"
    padding = MAX_YAML_BYTES - len(GOOD) - 2
    path.write_text(GOOD + "#" + "x" * padding + "\n")
    assert path.stat().st_size == MAX_YAML_BYTES
    assert load_yaml(path).data["model"]["layers"] == [{"type": "Dense", "units": 2}]
    path.write_text(GOOD + "#" + "é" + "x" * (padding - 1) + "\n")  # é is 2 bytes
    with pytest.raises(UserError, match=r"the file is 1\.0 MiB \(1,048,577 bytes\)"):
        load_yaml(path)


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs named pipes")
def test_pipe_without_a_size_is_cut_at_the_limit(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)

    def write() -> None:
        try:
            with fifo.open("w") as f:
                f.write("#" + "x" * (2 * MAX_YAML_BYTES) + "\n")
        except BrokenPipeError:  # the reader stopped at the limit, as it should
            pass

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with pytest.raises(UserError, match=r"config\.yaml: the file is over 1 MiB; "):
        load_yaml(fifo)
    writer.join(timeout=10)


def test_oversize_override_value_is_refused(tmp_path, capsys):
    config = tmp_path / "good.yaml"
    config.write_text(GOOD)
    code, _, err = run_cli(capsys, "check", str(config),
                           "model.name=" + "x" * (MAX_YAML_BYTES + 1))
    assert code == 2, err[:500]
    assert "override #1 (model.name=...): the value is 1.0 MiB (1,048,577 bytes)" in err
    assert len(err) < 1000  # the value itself is not echoed back


def _many_keys(size: int) -> str:
    """A config of about ``size`` bytes (at most) with many keys, as a generated file has."""
    lines = GOOD.splitlines() + ["junk:"]
    total, i = len(GOOD) + 6, 0
    while total < size - 40:
        line = f"  k{i:07d}: {{on: true, n: [{i}]}}"
        lines.append(line)
        total += len(line) + 1
        i += 1
    return "\n".join(lines) + "\n"


def _counting(counts: dict[str, int], name: str, function):
    def counted(*args, **kwargs):
        counts[name] += 1
        counts["active"] += 1
        try:
            return function(*args, **kwargs)
        finally:
            counts["active"] -= 1
    return counted


def test_loading_time_grows_linearly_up_to_the_limit(tmp_path, monkeypatch):
    small, big = tmp_path / "small.yaml", tmp_path / "big.yaml"
    small.write_text(_many_keys(MAX_YAML_BYTES // 4))
    big.write_text(_many_keys(MAX_YAML_BYTES))
    assert MAX_YAML_BYTES - 100 < big.stat().st_size <= MAX_YAML_BYTES
    # Counted: values composed and converted grow as the file does (4x), and the cyclic
    # garbage collector (which made loading superlinear) never runs while composing or
    # converting.
    counts = {"composed": 0, "converted": 0, "collections": 0, "active": 0}
    monkeypatch.setattr(source._Loader, "compose_node",
                        _counting(counts, "composed", source._Loader.compose_node))
    monkeypatch.setattr(source._Converter, "convert",
                        _counting(counts, "converted", source._Converter.convert))

    def on_gc(phase: str, info: dict) -> None:
        counts["collections"] += phase == "start" and counts["active"] > 0

    def load(path: Path) -> tuple[dict[str, float], Document]:
        counts.update(composed=0, converted=0, collections=0)
        start = time.process_time()  # CPU time: other work on the machine does not count
        doc = load_yaml(path)
        return {**counts, "cpu_s": time.process_time() - start}, doc  # (active: 0 again)

    gc.callbacks.append(on_gc)
    try:
        small_runs = [load(small)[0] for _ in range(2)]
        big_run, doc = load(big)
    finally:
        gc.callbacks.remove(on_gc)
    small_run = min(small_runs, key=lambda run: run["cpu_s"])
    for name in ("composed", "converted"):
        assert 3.8 < big_run[name] / small_run[name] < 4.2, (small_run, big_run)
    assert big_run["collections"] == small_run["collections"] == 0, (small_run, big_run)
    ratio = big_run["cpu_s"] / small_run["cpu_s"]
    assert ratio < 8, f"4x the size took {ratio:.1f}x the CPU time"
    # and every value and key still has its location
    last = len(big.read_text().splitlines())
    key = next(reversed(doc.data["junk"]))
    assert doc.locate(("junk", key, "n", 0)).line == last
    assert doc.locate(("junk", key), key=True) == Location(str(big), last, 3)


class _CountingDict(dict):
    """A dict that counts whole-table scans and single-key operations."""

    scans = 0
    lookups = 0

    def _scan(self):
        type(self).scans += 1

    def __iter__(self):
        self._scan()
        return super().__iter__()

    def keys(self):
        self._scan()
        return super().keys()

    def items(self):
        self._scan()
        return super().items()

    def values(self):
        self._scan()
        return super().values()

    def copy(self):
        self._scan()
        return super().copy()

    def __getitem__(self, key):
        type(self).lookups += 1
        return super().__getitem__(key)

    def __setitem__(self, key, value):
        type(self).lookups += 1
        super().__setitem__(key, value)

    def __contains__(self, key):
        type(self).lookups += 1
        return super().__contains__(key)

    def get(self, key, default=None):
        type(self).lookups += 1
        return super().get(key, default)

    def pop(self, key, *default):
        type(self).lookups += 1
        return super().pop(key, *default)


def test_overrides_cost_what_they_replace_not_the_file_size():
    """Counted on the location tables and the big mapping: no override scans them, and
    the same overrides do the same number of lookups in a file of 13x the values."""
    overrides = [f"junk.k{i:07d}.on=false" for i in range(500)]

    def work(text: str) -> tuple[int, int]:
        doc = parse_yaml(text, "c.yaml")
        doc.values, doc.keys = _CountingDict(doc.values), _CountingDict(doc.keys)
        doc.data["junk"] = _CountingDict(doc.data["junk"])
        _CountingDict.scans = _CountingDict.lookups = 0
        apply_overrides(doc, overrides)
        counted = (_CountingDict.scans, _CountingDict.lookups)
        assert doc.data["junk"]["k0000499"]["on"] is False
        assert str(doc.locate(("junk", "k0000007", "on"))).startswith("command-line override")
        assert doc.locate(("junk", "k0000007", "n")).line == 12  # the file's, kept
        return counted

    small = work(_many_keys(20_000))
    big = work(_many_keys(MAX_YAML_BYTES // 4))  # 13x the values
    assert small[0] == big[0] == 0, (small, big)  # no scan of a whole table
    assert small[1] == big[1] > 0, (small, big)  # the same lookups


ANCHORS = """\
model:
  inputs: [{shape: [4]}]
  defaults:
    QuantDense: &binary {kernel_quantizer: ste_sign, kernel_constraint: weight_clip}
  layers:
    - &hidden {type: QuantDense, units: 3, <<: *binary}
    - {<<: *hidden, units: 5}
    - *hidden
    - {type: Dense, units: 2}
"""


def test_anchors_aliases_and_merge_keys_load_with_locations(tmp_path, capsys):
    path = tmp_path / "anchors.yaml"
    path.write_text(ANCHORS)
    code, out, err = run_cli(capsys, "check", str(path))
    assert code == 0, err
    config = load_config(path)
    layers = config.document.data["model"]["layers"]
    assert layers[1] == {"type": "QuantDense", "units": 5, "kernel_quantizer": "ste_sign",
                         "kernel_constraint": "weight_clip"}
    assert layers[2] == layers[0]
    lines = {p: config.document.locate(("model", "layers", *p)).line
             for p in [(1, "units"), (1, "type"), (2, "kernel_quantizer"), (2,)]}
    # A key written beside a merge key is where it is written; the rest is in the anchor.
    assert lines == {(1, "units"): 7, (1, "type"): 6, (2, "kernel_quantizer"): 4, (2,): 6}


@pytest.mark.parametrize("broken,line,message", [
    (("ste_sign,", "ste_sgn,"), 4, "unknown quantizer 'ste_sgn'"),  # in the anchor
    (("units: 5", "unitz: 5"), 7, "has no argument 'unitz'"),  # beside a merge key
])
def test_errors_inside_aliased_values_point_at_what_was_written(broken, line, message,
                                                                tmp_path, capsys):
    path = tmp_path / "anchors.yaml"
    path.write_text(ANCHORS.replace(*broken))
    code, _, err = run_cli(capsys, "check", str(path))
    assert code == 2, err
    assert f"{path}:{line}:" in err, err
    assert message in err


def test_merge_key_rules():
    text = ("a: &a {xx: 1, yy: {deep: 1}}\nb: &b {xx: 2, zz: 2}\n"
            "m: {<<: [*a, *b], yy: 3}\n")
    doc = parse_yaml(text, "m.yaml")
    # Keys written beside the merge key win, then the earlier of the merged mappings.
    assert doc.data["m"] == {"xx": 1, "yy": 3, "zz": 2}
    assert doc.locate(("m", "yy")).line == 3
    assert doc.locate(("m", "yy", "deep")).line == 3  # the merged mapping's parts are gone
    assert doc.locate(("m", "zz")).line == 2
    with pytest.raises(UserError, match=r"^m\.yaml:3:26: m\.yy: duplicate key"):
        parse_yaml(text.replace("yy: 3}", "yy: 3, yy: 4}"), "m.yaml")


def test_merge_keys_copy_each_key_once(monkeypatch):
    lines = ["m0: &m0 {aa: 1}"]  # nine merges a level, eight levels: 9**8 copies of aa
    lines += [f"m{i}: &m{i} {{<<: [{', '.join([f'*m{i - 1}'] * 9)}]}}" for i in range(1, 9)]
    assert parse_yaml("\n".join(lines), "m.yaml").data["m8"] == {"aa": 1}
    monkeypatch.setattr(source, "MAX_VALUES", 50)  # ten keys merged six times: 60 copies
    text = "b: &b {" + ", ".join(f"k{i}: 1" for i in range(10)) + "}\n"
    text += "".join(f"m{i}: {{<<: *b}}\n" for i in range(6))
    with pytest.raises(UserError, match=r"^w\.yaml:7:6: this merge key takes the config over "
                                         "50 merged keys"):
        parse_yaml(text, "w.yaml")


def test_negative_index_override_points_at_the_override(tmp_path):
    doc = parse_yaml(GOOD, "g.yaml")
    apply_overrides(doc, ["model.layers[-1].units=-1"])
    assert str(doc.locate(("model", "layers", 0, "units"))).startswith("command-line")
