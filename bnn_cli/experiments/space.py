"""A sweep's arguments: ``KEY=V1,V2`` lists and ``KEY=loguniform(a,b)`` ranges.

Each argument names one config key, in the language of ``bnn train``'s overrides:

- ``KEY=VALUE`` (no top-level comma): fixed, applied to every trial;
- ``KEY=V1,V2,...``: the values to try (the grid's axis; a random or TPE search picks
  among them). Commas inside brackets, braces, parentheses or quotes do not split, so
  ``model.layers[0].kernel_size=[3,3],[5,5]`` has two values;
- ``choice(V1,V2,...)``: the same as a list;
- ``range(a,b[,step])``: the integers a, a+step, ... below b (as Python's ``range``);
- ``int(a,b)``: the integers from a to b, both included;
- ``uniform(a,b)`` / ``loguniform(a,b)``: real numbers in [a, b] (sampled on a log scale
  by ``loguniform``), for ``--search random|tpe`` only.

Each value is passed on as the text written here, so it reaches ``bnn train``'s own
override parser (YAML values, located errors) unchanged; sampled numbers are written as
YAML reads them back. :func:`points_to_check` gives the configs that must pass
``bnn check`` before any trial starts.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

from bnn_cli.config.source import parse_override_path
from bnn_cli.errors import UserError, did_you_mean

SEARCHES = ("grid", "random", "tpe")
DISTRIBUTIONS = ("choice", "range", "int", "uniform", "loguniform")
_CALL = re.compile(r"^\s*([A-Za-z_][A-Za-z0-9_]*)\s*\((.*)\)\s*$", re.DOTALL)
_PAIRS = {"[": "]", "{": "}", "(": ")"}
GRID_LIMIT = 10_000
"""More grid points than this is a mistake (a range with a tiny step), not a plan."""


@dataclass
class Param:
    """One swept key: ``kind`` "values" (``values``: the texts to try), "int" or "float"
    (``low``..``high``, ``step`` for ints, ``log`` for loguniform)."""

    key: str
    arg: str  # the argument as given, for messages
    kind: str
    values: list[str] = field(default_factory=list)
    low: float | None = None
    high: float | None = None
    step: int = 1
    log: bool = False

    @property
    def is_range(self) -> bool:
        return self.kind in ("int", "float")

    def grid_values(self) -> list[str]:
        """Every value (the grid's axis); ints of a range are written out."""
        if self.kind == "values":
            return list(self.values)
        if self.kind == "int":
            return [str(v) for v in range(int(self.low), int(self.high) + 1, self.step)]
        raise UserError(f"sweep argument {self.arg!r}: a grid needs the values listed; "
                        f"{'loguniform' if self.log else 'uniform'}(...) is a range of real "
                        "numbers, which only --search random or --search tpe sample. List "
                        "values instead (KEY=0.001,0.01) or add --search random --trials N")

    def suggest(self, trial: Any, search: str = "random") -> str:
        """This key's value for an Optuna trial, as override text (a grid's values are
        its categories, whatever their kind)."""
        if search == "grid":
            return trial.suggest_categorical(self.key, self.grid_values())
        if self.kind == "values":
            return trial.suggest_categorical(self.key, self.values)
        if self.kind == "int":
            return str(trial.suggest_int(self.key, int(self.low), int(self.high),
                                         step=self.step))
        return yaml_number(trial.suggest_float(self.key, self.low, self.high, log=self.log))

    def bounds(self) -> list[str]:
        """The values whose configs are checked before the sweep starts: every listed
        value, or a range's two ends."""
        if self.kind == "values":
            return list(self.values)
        if self.kind == "int":
            return [str(int(self.low)), str(int(self.high))]
        return [yaml_number(self.low), yaml_number(self.high)]

    def describe(self) -> dict[str, Any]:
        if self.kind == "values":
            return {"key": self.key, "values": self.values}
        out = {"key": self.key, "kind": self.kind, "low": self.low, "high": self.high}
        if self.kind == "int":
            out["step"] = self.step
        else:
            out["log"] = self.log
        return out


@dataclass
class Space:
    """What a sweep varies (``params``) and what it fixes (``fixed`` overrides)."""

    params: list[Param]
    fixed: list[str]

    @property
    def keys(self) -> list[str]:
        return [p.key for p in self.params]

    def grid(self) -> list[dict[str, str]]:
        """Every point of the grid (the cartesian product), each key -> value text."""
        axes = [p.grid_values() for p in self.params]
        size = math.prod(len(a) for a in axes)
        if size > GRID_LIMIT:
            raise UserError(f"the grid has {size} points (more than {GRID_LIMIT}): "
                            f"{' x '.join(str(len(a)) for a in axes)} values of "
                            f"{', '.join(self.keys)}. Sweep fewer values, or sample with "
                            "--search random --trials N")
        return [dict(zip(self.keys, combo, strict=True)) for combo in itertools.product(*axes)]

    def search_space(self) -> dict[str, list[str]]:
        """Optuna GridSampler's search space (value texts, so the storage keeps them)."""
        return {p.key: p.grid_values() for p in self.params}


def overrides_of(point: dict[str, str]) -> list[str]:
    """``{"training.epochs": "3"}`` -> ``["training.epochs=3"]``."""
    return [f"{key}={value}" for key, value in point.items()]


def yaml_number(value: float) -> str:
    """A number as YAML reads it back as that number (``1.0e-05``, not ``1e-05``, which
    YAML 1.1 reads as text)."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return repr(value)  # 2.0
    text = yaml.safe_dump(value, default_flow_style=True)
    return text.split("\n", 1)[0].strip()


# ---------------------------------------------------------------------------------------
# Parsing
# ---------------------------------------------------------------------------------------


def parse_space(args: list[str], search: str = "grid") -> Space:
    """The sweep's ``KEY=...`` arguments -> what it varies and what it fixes; a
    :class:`UserError` naming the argument and the fix for anything malformed."""
    if search not in SEARCHES:
        raise UserError(f"--search {search!r} is not a search; use grid (every combination "
                        f"of listed values), random or tpe{did_you_mean(search, SEARCHES)}")
    params: list[Param] = []
    fixed: list[str] = []
    seen: dict[str, str] = {}
    for arg in args:
        key, sep, raw = arg.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UserError(f"sweep argument {arg!r} is not KEY=VALUES: write the config key, "
                            "'=' and the values, e.g. training.learning_rate=0.001,0.01 or "
                            "training.learning_rate=loguniform(1e-4,1e-2)")
        parse_override_path(key)  # (a malformed key path is named here, before anything)
        if key in seen:
            raise UserError(f"sweep arguments {seen[key]!r} and {arg!r} both set {key}; give "
                            "each key once, with all its values (KEY=V1,V2)")
        seen[key] = arg
        param = _parse_param(key, raw, arg)
        if param is None:
            fixed.append(f"{key}={raw}")
        else:
            params.append(param)
    if not params:
        raise UserError("nothing to sweep: give at least one key with several values "
                        "(training.learning_rate=0.001,0.01) or a range "
                        "(training.learning_rate=loguniform(1e-4,1e-2)); a single value "
                        "(KEY=V) is the same in every trial")
    if search == "grid":
        for param in params:
            param.grid_values()  # (a real-number range: the error says what to do)
    return Space(params, fixed)


def _parse_param(key: str, raw: str, arg: str) -> Param | None:
    """One argument's values; None for a single fixed value."""
    call = _CALL.match(raw)
    if call:
        name, inner = call.group(1), call.group(2)
        if name not in DISTRIBUTIONS:
            raise UserError(f"sweep argument {arg!r}: unknown distribution {name!r}"
                            f"{did_you_mean(name, DISTRIBUTIONS)}. Write choice(a,b,...), "
                            "range(a,b[,step]), int(a,b), uniform(a,b) or loguniform(a,b), "
                            "or list the values: KEY=V1,V2")
        return _distribution(key, name, _split(inner, arg), arg)
    values = _split(raw, arg)
    if len(values) == 1:
        if not values[0]:
            raise UserError(f"sweep argument {arg!r} gives no value; write KEY=V1,V2 (or "
                            "KEY=null for an empty value)")
        return None
    return Param(key, arg, "values", values=_distinct(values, arg))


def _distribution(key: str, name: str, args: list[str], arg: str) -> Param:
    if name == "choice":
        if args == [""]:
            raise UserError(f"sweep argument {arg!r}: choice() needs the values to choose "
                            "from, e.g. choice(ste_sign,approx_sign)")
        return Param(key, arg, "values", values=_distinct(args, arg))
    example = {"range": "range(16,65,16)", "int": "int(1,4)", "uniform": "uniform(0.5,1.5)",
               "loguniform": "loguniform(1e-4,1e-2)"}[name]
    wanted = "two or three" if name == "range" else "two"
    if len(args) not in ((2, 3) if name == "range" else (2,)):
        raise UserError(f"sweep argument {arg!r}: {name}() takes {wanted} numbers "
                        f"({'low, high' if name != 'range' else 'start, stop, step'}), got "
                        f"{len(args)}; e.g. {key}={example}")
    if name in ("range", "int"):
        numbers = [_integer(a, name, arg, example) for a in args]
        low, high = numbers[0], numbers[1]
        step = numbers[2] if len(numbers) == 3 else 1
        if step <= 0:
            raise UserError(f"sweep argument {arg!r}: the step must be a positive integer; "
                            f"e.g. {key}={example}")
        if name == "range":  # Python's: the stop is excluded
            if high <= low:
                raise UserError(f"sweep argument {arg!r}: range(start, stop) is empty (stop "
                                f"{high} is not above start {low}); e.g. {key}={example}")
            high = low + (high - 1 - low) // step * step
        elif high < low:
            raise UserError(f"sweep argument {arg!r}: int(low, high) needs low <= high; "
                            f"e.g. {key}={example}")
        return Param(key, arg, "int", low=low, high=high, step=step)
    low, high = (_real(a, name, arg, example) for a in args)
    if not low < high:
        raise UserError(f"sweep argument {arg!r}: {name}(low, high) needs low < high; "
                        f"e.g. {key}={example}")
    if name == "loguniform" and low <= 0:
        raise UserError(f"sweep argument {arg!r}: loguniform needs positive bounds (it "
                        f"samples the logarithm); use uniform({args[0]},{args[1]}) or a "
                        "positive low")
    return Param(key, arg, "float", low=low, high=high, log=name == "loguniform")


def _integer(text: str, name: str, arg: str, example: str) -> int:
    try:
        return int(text.strip())
    except ValueError:
        raise UserError(f"sweep argument {arg!r}: {name}() takes integers, not {text!r}; "
                        f"e.g. {example} (for real numbers use uniform(a,b) or list the "
                        "values)") from None


def _real(text: str, name: str, arg: str, example: str) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise UserError(f"sweep argument {arg!r}: {name}() takes numbers, not {text!r}; "
                        f"e.g. {example}") from None
    if not math.isfinite(value):
        raise UserError(f"sweep argument {arg!r}: {name}() needs finite bounds, not {text!r}")
    return value


def _distinct(values: list[str], arg: str) -> list[str]:
    stripped = [v.strip() for v in values]
    if "" in stripped:
        raise UserError(f"sweep argument {arg!r} has an empty value (two commas in a row, "
                        "or one at an end); write KEY=V1,V2 (KEY=null,V2 for an empty one)")
    duplicates = sorted({v for v in stripped if stripped.count(v) > 1})
    if duplicates:
        raise UserError(f"sweep argument {arg!r} lists {', '.join(duplicates)} twice; give "
                        "each value once")
    return stripped


def _split(text: str, arg: str) -> list[str]:
    """Split at top-level commas (not inside [], {}, () or quotes)."""
    parts, current, stack, quote = [], [], [], None
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = None
            continue
        if ch in "'\"":
            quote = ch
        elif ch in _PAIRS:
            stack.append(_PAIRS[ch])
        elif ch in _PAIRS.values():
            if not stack or stack.pop() != ch:
                raise UserError(f"sweep argument {arg!r}: unbalanced {ch!r}; check the "
                                "brackets and parentheses")
        elif ch == "," and not stack:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    if quote or stack:
        missing = quote or stack[-1]
        raise UserError(f"sweep argument {arg!r}: a {missing!r} is missing; check the quotes "
                        "and brackets (quote the whole argument for the shell)")
    parts.append("".join(current))
    return [p.strip() for p in parts]


# ---------------------------------------------------------------------------------------
# What to check before the first trial
# ---------------------------------------------------------------------------------------


def points_to_check(space: Space, search: str) -> Iterator[dict[str, str]]:
    """The configs that must pass ``bnn check`` before any trial starts: every grid
    point; for random/TPE, every listed value and each range's two ends (all ranges at
    their lows, then at their highs, with the first value of each list; then each listed
    value with the others at their first)."""
    if search == "grid":
        yield from space.grid()
        return
    firsts = {p.key: p.bounds()[0] for p in space.params}
    seen: set[tuple[str, ...]] = set()

    def once(point: dict[str, str]) -> Iterator[dict[str, str]]:
        marker = tuple(point[k] for k in space.keys)
        if marker not in seen:
            seen.add(marker)
            yield point

    yield from once(dict(firsts))
    yield from once({p.key: p.bounds()[-1] if p.is_range else firsts[p.key]
                     for p in space.params})
    for param in space.params:
        if not param.is_range:
            for value in param.values:
                yield from once({**firsts, param.key: value})
