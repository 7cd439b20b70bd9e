"""Configs as flat ``key.path[0] -> value`` tables, in the override language's key paths
(what ``bnn runs`` and ``bnn compare`` compare, and TensorBoard's HParams shows)."""

from __future__ import annotations

from typing import Any

import yaml


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """``{"a": {"b": [1, {"c": 2}]}}`` -> ``{"a.b[0]": 1, "a.b[1].c": 2}`` (the override
    language's key paths); an empty mapping or list is a value of its own."""
    out: dict[str, Any] = {}
    if isinstance(value, dict) and value:
        for key, child in value.items():
            out.update(flatten(child, f"{prefix}.{key}" if prefix else str(key)))
    elif isinstance(value, list) and value:
        for i, child in enumerate(value):
            out.update(flatten(child, f"{prefix}[{i}]"))
    else:
        out[prefix] = value
    return out


def text(value: Any) -> str:
    """A config value as one line of YAML (what an override would write)."""
    if isinstance(value, str):
        return value
    return yaml.safe_dump(value, default_flow_style=True, width=10_000).split("\n...")[0].strip()
