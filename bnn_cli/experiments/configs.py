"""Run directories' configs as flat ``key.path[0] -> value`` tables, to compare them."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

import yaml

from bnn_cli.config.flat import flatten

IGNORED = ("name",)
"""Keys that differ between any two runs without saying anything about them."""


def resolved_config(run: Path) -> dict[str, Any] | None:
    """A run's config.resolved.yaml, flattened (None if missing or unreadable)."""
    with contextlib.suppress(OSError, yaml.YAMLError):
        data = yaml.safe_load((run / "config.resolved.yaml").read_text(encoding="utf-8"))
        if isinstance(data, dict):
            return flatten(data)
    return None


def run_overrides(run: Path) -> list[str]:
    """The KEY=VALUE overrides a run was started with (overrides.json)."""
    with contextlib.suppress(OSError, ValueError):
        data = json.loads((run / "overrides.json").read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("overrides"), list):
            return [str(o) for o in data["overrides"]]
    return []


def differences(configs: list[dict[str, Any] | None]) -> list[str]:
    """The keys whose values are not the same in every config (present in some and
    absent in others included), in the first config's order."""
    known = [c for c in configs if c is not None]
    keys = list(dict.fromkeys(k for c in known for k in c))
    return [k for k in keys if k not in IGNORED
            and len({json.dumps(c.get(k, "<absent>"), sort_keys=True, default=str)
                     for c in known}) > 1]
