"""Property-based fuzzing of configs and command lines.

Valid configs (the shipped ones) are mutated: keys deleted, renamed or added, values
replaced by wrong types, random (unicode) strings, huge or negative numbers, the YAML
text truncated or spliced; the command line gets random ``KEY=VALUE`` overrides and
options. Every outcome must be a success or one clean error with exit code 2: never an
exception out of ``main``, never a traceback, never a hang (an alarm per case), and
never a run directory that later breaks ``--resume`` or ``eval``.

Most cases run ``bnn check`` (no training); a few run ``bnn train`` with tiny settings.
Examples are derandomized (the same cases on every run), and the counts of cases tried
and of tracebacks are printed at the end.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import signal
import tempfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bnn_cli.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = {p.stem: yaml.safe_load(p.read_text()) for p in sorted((ROOT / "configs").glob(
    "*.yaml"))}
PLUGIN = Path(__file__).parent / "plugins" / "my_quantizers.py"
TINY = ["training.epochs=1", "training.steps_per_epoch=2", "data.validation_split=test[:5%]"]
CASE_SECONDS = 120  # a case that takes longer than this counts as a hang

COUNTS = {"cases": 0, "check": 0, "train": 0, "exit 0": 0, "exit 1": 0, "exit 2": 0,
          "tracebacks": 0}


@pytest.fixture(scope="module", autouse=True)
def sandbox(tmp_path_factory):
    """A private TFDS data_dir (the embedded digits are prepared into it on first use),
    working folder and HOME: whatever relative path a mutated config names stays there."""
    old_env = {k: os.environ.get(k) for k in ("TFDS_DATA_DIR", "HOME")}
    old_cwd = os.getcwd()
    os.environ["TFDS_DATA_DIR"] = str(tmp_path_factory.mktemp("tfds"))
    os.environ["HOME"] = str(tmp_path_factory.mktemp("home"))
    os.chdir(tmp_path_factory.mktemp("cwd"))
    yield
    os.chdir(old_cwd)
    for key, value in old_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    from tensorflow.python.framework import config as tf_config

    tf_config.disable_op_determinism()  # a mutated config may have switched it on


# ---------------------------------------------------------------------------------------
# Strategies
# ---------------------------------------------------------------------------------------

# Unicode without lone surrogates (YAML cannot encode them).
text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=24)
NASTY_STRINGS = [
    "", " ", "ste_sign", "QuantDense", "QuantConv2D", "Dense", "relu", "Adam", "case",
    "input", "${filters}", "${nope}", "../../evil", "/etc/passwd", "~", "名前", "\u202e",
    "test[:10%]", "train[50%:]", "train[:-1]", "mnist", "cifar100", "sklearn_digits:9.9.9",
    "huggingface:x", "1e309", ".inf", "nan", "null", "a\x00b", "x" * 300, "-1",
    "val_accuracy", "loss", "sparse_categorical_crossentropy", "categorical_crossentropy",
]
HUGE_NUMBERS = [0, -1, -2**31, 2**31, 2**63, -2**63, 10**6, 10**9, 10**30, 10**400 // 10**300,
                1e-300, 1e300, float("inf"), float("-inf"), float("nan"), -0.0]
scalar = st.one_of(
    st.none(), st.booleans(), st.integers(-10, 300), st.sampled_from(HUGE_NUMBERS),
    st.floats(allow_nan=True, allow_infinity=True), text, st.sampled_from(NASTY_STRINGS),
)
value = st.recursive(scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.one_of(text, st.sampled_from(
        ["type", "name", "inputs", "block", "repeat", "filters", "units"])), inner,
        max_size=3)), max_leaves=6)


def _similar(old: Any) -> st.SearchStrategy:
    """Values of the same kind as ``old`` (so that more cases get past the schema into
    the builder, the registry and Keras): other sizes, other names."""
    if isinstance(old, bool):
        return st.booleans()
    if isinstance(old, int):
        return st.integers(-3, 3 * max(old, 1)) | st.sampled_from(HUGE_NUMBERS)
    if isinstance(old, float):
        return st.floats(allow_nan=True, allow_infinity=True) | st.sampled_from(HUGE_NUMBERS)
    if isinstance(old, str):
        return st.sampled_from(NASTY_STRINGS) | text
    if isinstance(old, list):
        return st.lists(scalar, max_size=len(old) + 1)
    return value


def _paths(node: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path in a config tree (dict keys and list indices)."""
    out = [prefix] if prefix else []
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


def _format(path: tuple) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@st.composite
def mutated_config(draw, bases=tuple(CONFIGS)) -> tuple[str, dict]:
    """(base name, a config tree with 1..4 mutations)."""
    import copy

    name = draw(st.sampled_from(bases))
    tree = copy.deepcopy(CONFIGS[name])
    for _ in range(draw(st.sampled_from([1, 1, 1, 2, 3]))):
        paths = _paths(tree)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = tree
        for part in path[:-1]:
            parent = parent[part]
        last = path[-1]
        op = draw(st.sampled_from(["delete", "replace", "replace", "rename", "add"]))
        if op == "delete":
            del parent[last]
        elif op == "replace":
            parent[last] = draw(value | _similar(parent[last]))
        elif op == "rename" and isinstance(parent, dict):
            parent[draw(text | st.sampled_from(["type", "name", "modle", "layer"]))] = \
                parent.pop(last)
        elif op == "add" and isinstance(parent, dict):
            parent[draw(text)] = draw(value)
        elif isinstance(parent, list):  # rename/add on a list: insert an item
            parent.insert(draw(st.integers(0, len(parent))), draw(value))
    data = tree.get("data") if isinstance(tree, dict) else None
    if isinstance(data, dict):  # TFDS prepares the digits wherever data_dir says:
        data.pop("data_dir", None)  # keep it in the sandbox's TFDS_DATA_DIR
    return name, tree


@st.composite
def nudged_config(draw) -> tuple[str, dict]:
    """The quickstart config with one value replaced by one of the same kind (or any
    value): most of these still train, so the run directory they leave gets tested."""
    import copy

    tree = copy.deepcopy(CONFIGS["quickstart"])
    leaves = [p for p in _paths(tree) if p[0] != "name"
              and not isinstance(_get(tree, p), dict | list) and p[:2] != ("data", "dataset")]
    path = draw(st.sampled_from(leaves))
    old = _get(tree, path)
    _get(tree, path[:-1])[path[-1]] = draw(_similar(old) if draw(st.booleans()) else value)
    return "quickstart", tree


def _get(tree: Any, path: tuple) -> Any:
    for part in path:
        tree = tree[part]
    return tree


def _dump(tree: Any) -> str:
    return yaml.safe_dump(tree, allow_unicode=True, sort_keys=False)


@st.composite
def yaml_text(draw) -> str:
    """The YAML text of a mutated config, sometimes damaged as text."""
    name, tree = draw(mutated_config())
    out = _dump(tree)
    how = draw(st.sampled_from(["as is", "as is", "truncate", "splice", "tag"]))
    if how == "truncate":
        out = out[: draw(st.integers(0, len(out)))]
    elif how == "splice":
        at = draw(st.integers(0, len(out)))
        out = out[:at] + draw(st.sampled_from(["\t", ": ", "- ", "{", "]", "&a ", "*a",
                                               "<<: *b", "%YAML 1.1\n", "\n---\n", "'"]) |
                              text) + out[at:]
    elif how == "tag":
        at = draw(st.integers(0, len(out)))
        out = out[:at] + "!!python/object/apply:os.system ['echo pwned'] " + out[at:]
    return out


override = st.builds(
    lambda key, val: f"{key}={val}",
    st.one_of(st.sampled_from([_format(p) for p in _paths(CONFIGS["quickstart"])]),
              st.sampled_from(["name", "plugins", "model.layers[99].units", "[0]", "a..b",
                               "model.layers[x]", "training.epochs.x", "=", ""]), text),
    st.one_of(scalar.map(lambda v: json.dumps(v, allow_nan=True, ensure_ascii=False)),
              text, st.sampled_from(["[", "{a: 1", "!!python/name:os.system", "*x",
                                     "[{type: rescale}]", "{type: Bop}", "-5", "1e999"])),
)
option = st.one_of(
    st.just(["--json"]),
    st.builds(lambda p: ["--plugin", p], st.sampled_from(
        [str(PLUGIN), "missing.py", "no_such_plugin_module_xyz", "", ".", "a/b/c.py",
         ".relative", "名前.py", "tests/plugins"])),
    st.builds(lambda d: ["--data-dir", d], st.sampled_from(["", "/dev/null/tfds"])),
    st.sampled_from([["--frobnicate"], ["--json=maybe"], ["-x"], ["--"], ["--help"]]),
)


# ---------------------------------------------------------------------------------------
# Running a case
# ---------------------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by the alarm: a BaseException so that main's last line of defence, which
    turns exceptions into exit 1, cannot swallow it."""


@contextlib.contextmanager
def _alarm(seconds: int):
    def ring(signum, frame):
        raise Hang(f"no outcome after {seconds} s")

    previous = signal.signal(signal.SIGALRM, ring)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def run_bnn(argv: list[str], kind: str) -> tuple[int, str]:
    """``main(argv)`` with stdout/stderr captured: (exit code, output). Counts the case."""
    COUNTS["cases"] += 1
    COUNTS[kind] += 1
    out = io.StringIO()
    code: int | None = None
    try:
        with _alarm(CASE_SECONDS), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(out):
            code = main(argv)
    except Exception as exc:  # noqa: BLE001 - the property: main never raises
        COUNTS["tracebacks"] += 1
        raise AssertionError(f"main({argv!r}) raised {type(exc).__name__}: {exc}") from exc
    text_out = out.getvalue()
    COUNTS[f"exit {code}"] = COUNTS.get(f"exit {code}", 0) + 1
    # Exit 1 is a failure of the run itself; the one a config can cause is a loss that
    # became NaN, which marks the run failed (a documented outcome, not a crash).
    failed_run = kind == "train" and code == 1 and "the run is marked failed" in text_out
    if "Traceback" in text_out or (code not in (0, 2) and not failed_run):
        COUNTS["tracebacks"] += "Traceback" in text_out
        raise AssertionError(f"main({argv!r}) -> exit {code}:\n{text_out[-3000:]}")
    if code == 2:
        assert text_out.strip(), f"main({argv!r}): exit 2 without a message"
    return code, text_out


def _write(text_: str) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="bnn-fuzz-"))
    path = folder / "config.yaml"
    path.write_text(text_, encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------

COMMON = settings(deadline=None, derandomize=True, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@settings(COMMON, max_examples=300)
@given(source=yaml_text(), overrides=st.lists(override, max_size=3),
       options=st.lists(option, max_size=2))
def test_check_never_crashes(source, overrides, options):
    path = _write(source)
    try:
        run_bnn(["check", str(path), *overrides, *[o for opt in options for o in opt]],
                "check")
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


@pytest.mark.slow
@settings(COMMON, max_examples=3000)
@given(source=yaml_text(), overrides=st.lists(override, max_size=3),
       options=st.lists(option, max_size=2))
def test_check_never_crashes_long(source, overrides, options):
    """The same property over ten times as many configs (the slow tier)."""
    test_check_never_crashes.hypothesis.inner_test(source, overrides, options)


# Overrides that keep the quickstart valid (its data, the embedded digits, is offline):
# each generated case must be accepted, or a `check` that refuses everything would pass.
VALID_OVERRIDES = {
    "training.epochs": st.integers(1, 1000),
    "training.batch_size": st.integers(1, 512),
    "training.seed": st.integers(0, 2**31 - 1),
    "training.learning_rate.initial": st.floats(1e-6, 1.0).map(repr),
    "training.optimizer": st.sampled_from(["{type: Adam}", "{type: SGD, momentum: 0.9}",
                                           "{type: RMSprop}", "{type: Adam, beta_1: 0.5}"]),
    "model.layers[0].filters": st.integers(1, 96),
    "model.layers[2].kernel_size": st.sampled_from([1, 3, 5]),
    "model.layers[9].units": st.integers(1, 300),
    "model.defaults.QuantConv2D.kernel_quantizer": st.sampled_from(
        ["ste_sign", "approx_sign", "swish_sign", "magnitude_aware_sign"]),
    "data.train_split": st.sampled_from(["train[:50%]", "train[:90%]", "train[10%:90%]"]),
}
valid_overrides = st.lists(st.sampled_from(sorted(VALID_OVERRIDES)), min_size=1, max_size=4,
                           unique=True).flatmap(lambda keys: st.tuples(
                               *[VALID_OVERRIDES[k].map(lambda v, k=k: f"{k}={v}")
                                 for k in keys]))


@settings(COMMON, max_examples=25)
@given(overrides=valid_overrides)
def test_valid_cases_are_accepted(overrides):
    """Valid overrides of the quickstart, generated: `check` accepts every one (exit 0)."""
    code, out = run_bnn(["check", str(ROOT / "configs" / "quickstart.yaml"), *overrides],
                        "check")
    assert code == 0, f"a valid case was refused: {overrides}\n{out[-2000:]}"


@settings(COMMON, max_examples=60)
@given(argv=st.lists(st.one_of(text, st.sampled_from(
    ["check", "train", "eval", "schema", "list-quantizers", "list-layers", "--json",
     "--resume", "--output", "--checkpoint", "best", "last", "--split", str(ROOT / "configs"),
     str(ROOT / "configs" / "quickstart.yaml"), "--plugin", "-o", "/", "."])), max_size=5))
def test_any_command_line_is_handled(argv):
    """Random words as a command line."""
    if "train" in argv:  # keep this fast: no 20-epoch training of a shipped config
        argv = ["check" if a == "train" else a for a in argv]
    run_bnn(argv, "check")


def _later_use_works(output: Path) -> None:
    """A run directory left by any outcome must not break `--resume` or `eval`."""
    for run in (p for p in output.iterdir() if p.is_dir() and not p.name.startswith(".")):
        status = json.loads((run / "run.json").read_text())
        has_checkpoint = any((run / "checkpoints").glob("epoch-*"))
        code, out = run_bnn(["eval", str(run), "--checkpoint", "last"], "train")
        assert code == (0 if has_checkpoint else 2), out
        code, out = run_bnn(["train", str(run / "config.yaml"), "--resume", str(run)],
                            "train")
        if status["status"] in ("completed", "interrupted"):
            assert code == 0, out
        # Any other end (a config error found during the epoch) is reported again, cleanly.


@pytest.mark.slow
@settings(COMMON, max_examples=20)
@given(case=nudged_config() | mutated_config(bases=("quickstart",)),
       overrides=st.lists(override, max_size=1))
def test_train_never_leaves_a_broken_run(case, overrides):
    _, tree = case
    path = _write(_dump(tree))
    output = path.parent / "runs"
    try:
        code, out = run_bnn(["train", str(path), *overrides, *TINY, "--output", str(output)],
                            "train")
        if output.is_dir():
            _later_use_works(output)
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)


# ---------------------------------------------------------------------------------------
# What the fuzzer found (each crashed with exit 1, a segfault or a broken run before)
# ---------------------------------------------------------------------------------------

QUICKSTART = str(ROOT / "configs" / "quickstart.yaml")


@pytest.mark.parametrize("config,override,message", [
    ("seed_dense", "model.inputs=[]", "model.inputs: List should have at least 1 item"),
    ("quickstart", "training.loss=''", "training.loss: unknown loss ''"),
    ("quickstart", "training.metrics=[accuracy, '']", "training.metrics[1]: unknown metric"),
    ("quickstart", "model.layers[0].filters=1000000000", "over the limit of 536,870,912"),
    ("quickstart", "data.shuffle_buffer=4611686018427387904",  # segfaulted tf.data
     "data.shuffle_buffer: Input should be less than or equal to 10000000"),
    ("quickstart", "plugins=['']", "plugin module '' cannot be imported"),
])
def test_found_config_errors_are_clean(config, override, message):
    code, out = run_bnn(["check", str(ROOT / "configs" / f"{config}.yaml"), override], "check")
    assert code == 2 and message in out, out


def test_found_training_step_errors_are_clean(tmp_path):
    """A wrong argument type (now refused by the checks, located at its key) and a loss
    that only the traced training step notices: refused before a run directory exists."""
    code, out = run_bnn(["train", QUICKSTART, "model.layers[12].momentum={}", *TINY,
                         "--output", str(tmp_path)], "train")
    assert code == 2 and "model.layers[12].momentum: expected a number, got {}" in out, out
    assert list(tmp_path.iterdir()) == []
    code, out = run_bnn(["train", QUICKSTART, "training.loss=categorical_crossentropy",
                         *TINY, "--output", str(tmp_path)], "train")
    assert code == 2 and "are incompatible" in out and "data.one_hot" in out, out
    code, out = run_bnn(["train", QUICKSTART, "model.layers[5].pad_values=[1, 2]", *TINY,
                         "--output", str(tmp_path)], "train")
    assert code == 2 and "model.layers[5].pad_values: expected a number, got [1, 2]" in out
    assert list(tmp_path.iterdir()) == []


def test_found_runtime_op_errors_mark_the_run_failed(tmp_path):
    """A value only the running op checks (5 outputs for 10 classes: the loss op finds a
    label out of range): exit 2 naming the op and the epoch, the run marked failed, and
    --resume and eval of what it left answer cleanly."""
    code, out = run_bnn(["train", QUICKSTART, "model.layers[11].units=5", *TINY,
                         "--output", str(tmp_path)], "train")
    assert code == 2 and "training failed in epoch 1" in out, out
    # (whichever of the loss's ops meets the label first words it: "outside the valid
    # range of [0, 5)" or "indices[1] = 8 is not in [0, 5)")
    assert "[0, 5)" in out and "sparse_categorical_crossentropy" in out, out
    (run,) = list(tmp_path.iterdir())
    assert json.loads((run / "run.json").read_text())["status"] == "failed"
    _later_use_works(tmp_path)


def test_fuzz_report(capsys):
    """The figures: cases tried and tracebacks (must be 0), shown even without -s."""
    if not COUNTS["cases"]:
        pytest.skip("no fuzz case ran (deselected)")
    report = ", ".join(f"{k} {v}" for k, v in COUNTS.items())
    with capsys.disabled():
        print(f"\nfuzz: {report}")
    assert COUNTS["tracebacks"] == 0
