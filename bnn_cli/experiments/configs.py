"""Run directories' configs as flat ``key.path[0] -> value`` tables, to compare them."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from bnn_cli.config.flat import flatten
from bnn_cli.errors import UserError
from bnn_cli.rundir.run import RunDir

IGNORED = ("name",)
"""Keys that differ between any two runs without saying anything about them."""


def resolved_config(run: Path) -> dict[str, Any] | None:
    """A run's resolved config, flattened (None if missing or unreadable)."""
    data = RunDir(run).read_resolved_config()
    return None if data is None else flatten(data)


def run_overrides(run: Path) -> list[str]:
    """The KEY=VALUE overrides a run was started with ([] where they cannot be read)."""
    try:
        return RunDir(run).read_overrides()[0]
    except UserError:
        return []


def differences(configs: list[dict[str, Any] | None]) -> list[str]:
    """The keys whose values are not the same in every config (present in some and
    absent in others included), in the first config's order."""
    known = [c for c in configs if c is not None]
    keys = list(dict.fromkeys(k for c in known for k in c))
    return [k for k in keys if k not in IGNORED
            and len({json.dumps(c.get(k, "<absent>"), sort_keys=True, default=str)
                     for c in known}) > 1]
