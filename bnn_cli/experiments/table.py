"""``bnn runs``: one row per run directory under a folder.

A run's status is :meth:`RunDir.read_record`'s: a ``running`` run.json whose lock no live
process holds (``kill -9``, a crashed host) reads ``interrupted``, never ``running``. The
``differs`` column (and JSON key) shows what distinguishes a run from its siblings (the
runs in the same folder, e.g. a sweep's trials): the resolved-config keys whose values
differ among them; a run without siblings shows the overrides it was started with. (It
was called ``overrides``, which it holds only for a run alone.)
"""

from __future__ import annotations

import fnmatch
import math
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bnn_cli.config.flat import text as value_text
from bnn_cli.config.monitor import guess_mode
from bnn_cli.errors import UserError, did_you_mean
from bnn_cli.experiments.configs import IGNORED, differences, resolved_config, run_overrides
from bnn_cli.rundir.run import RUN_FILE, RunDir

SORT_KEYS = ("name", "status", "started", "epochs", "best", "test", "wall_time")
FILTER_KEYS = ("status", "name")
MAX_SHOWN = 6
"""Differing keys shown per row; more are counted (``--json`` lists them all)."""


def find_runs(root: Path) -> list[Path]:
    """Every run directory under ``root`` (itself included), by path; hidden folders
    (``.incomplete-*`` staging) and a run's own subfolders are not searched."""
    found = []
    for folder, dirs, files in os.walk(root):
        if RUN_FILE in files:
            found.append(Path(folder))
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
    return sorted(found)


def _mode(config: dict[str, Any] | None, monitor: str | None) -> str:
    given = (config or {}).get("training.monitor_mode")
    if given in ("min", "max"):
        return given
    return guess_mode(monitor or "")


def run_row(path: Path, root: Path) -> dict[str, Any]:
    """What ``bnn runs`` shows of one run directory (and ``--json`` prints)."""
    record = RunDir(path).read_record_safely()
    config = resolved_config(path)
    best = record.best or {}
    monitor = next((k for k in best if k != "epoch"), None) or \
        (config or {}).get("training.monitor")
    state = record.status or "unknown"
    if state == "starting":
        state = "running"  # (a live process creating its first checkpoint)
    try:
        name = str(path.resolve().relative_to(root.resolve())) or path.name
    except ValueError:
        name = str(path)
    if name == ".":
        name = path.resolve().name
    test = record.test_metrics
    return {"name": name, "path": str(path), "status": state,
            "pruned": record.pruned, "epochs_done": record.epochs_done or 0,
            "epochs": record.epochs, "monitor": monitor,
            "mode": _mode(config, monitor), "best": best.get(monitor) if monitor else None,
            "best_epoch": best.get("epoch"), "test": test,
            "wall_time": record.wall_time, "started": record.started,
            "error": record.error, "differs": {}, "_config": config}


def _distinguish(rows: list[dict[str, Any]]) -> None:
    """Fill each row's ``differs``: the keys its siblings (same parent folder) set
    differently, or, without siblings, the overrides it was started with."""
    groups: dict[Path, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[Path(row["path"]).resolve().parent].append(row)
    for group in groups.values():
        if len(group) > 1:
            keys = differences([r["_config"] for r in group])
            for row in group:
                config = row["_config"] or {}
                row["differs"] = {k: value_text(config[k]) if k in config else "(absent)"
                                  for k in keys}
        else:
            for item in run_overrides(Path(group[0]["path"])):
                key, _, value = item.partition("=")
                if key.strip() not in IGNORED:
                    group[0]["differs"][key.strip()] = value


def _test_value(row: dict[str, Any]) -> tuple[str | None, float | None]:
    """The test metric a row is sorted by: accuracy if logged, else the first."""
    test = row["test"]
    if not test:
        return None, None
    key = "accuracy" if "accuracy" in test else next(iter(test))
    return key, test[key]


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) \
        and math.isfinite(value)


def _sort(rows: list[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    reverse = key.startswith("-")
    name = key.removeprefix("-")
    config_keys = {k for r in rows for k in (r["_config"] or {})}
    if name not in SORT_KEYS and name not in config_keys:
        raise UserError(f"--sort {key!r}: not a column; sort by one of "
                        f"{', '.join(SORT_KEYS)} or a config key such as training.epochs "
                        f"(prefix '-' to reverse){did_you_mean(name, [*SORT_KEYS, *config_keys])}")

    def sort_key(row: dict[str, Any]) -> tuple:
        if name in ("best", "test"):  # best first, by each metric's own direction
            metric, value = (row["monitor"], row["best"]) if name == "best" \
                else _test_value(row)
            if not _finite(value):
                return (1, 0.0)
            down = (row["mode"] if name == "best" else guess_mode(metric or "")) == "min"
            return (0, value if down else -value)
        if name == "epochs":
            return (0, row["epochs_done"] or 0)
        if name == "wall_time":
            return (0, row["wall_time"] or 0.0) if _finite(row["wall_time"]) else (1, 0.0)
        if name in ("name", "status", "started"):
            return (0, str(row[name] or ""))
        value = (row["_config"] or {}).get(name)
        if _finite(value):
            return (0, 0, value)
        return (1 if value is None else 0, 1, str(value))

    return sorted(rows, key=sort_key, reverse=reverse)


def _filter(rows: list[dict[str, Any]], item: str) -> list[dict[str, Any]]:
    key, sep, wanted = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise UserError(f"--filter {item!r} is not KEY=VALUE; e.g. --filter status=completed, "
                        "--filter 'name=*trial-000*' or --filter training.epochs=5")
    if key == "status":
        return [r for r in rows if r["status"] == wanted or (wanted == "pruned" and r["pruned"])]
    if key == "name":
        return [r for r in rows if fnmatch.fnmatch(r["name"], wanted)
                or fnmatch.fnmatch(Path(r["name"]).name, wanted)]
    config_keys = {k for r in rows for k in (r["_config"] or {})}
    if key not in config_keys:
        raise UserError(f"--filter {item!r}: no run has a config key {key!r}; filter by "
                        f"status, name or a key of config.resolved.yaml such as "
                        f"training.epochs{did_you_mean(key, [*FILTER_KEYS, *config_keys])}")
    try:
        parsed = yaml.safe_load(wanted) if wanted.strip() else None
    except yaml.YAMLError:
        parsed = wanted
    return [r for r in rows if key in (r["_config"] or {})
            and value_text(r["_config"][key]) in (value_text(parsed), wanted)]


@dataclass
class RunsReport:
    root: Path
    rows: list[dict[str, Any]]

    def as_dict(self) -> dict[str, Any]:
        return {"root": str(self.root),
                "runs": [{k: v for k, v in r.items() if not k.startswith("_")}
                         for r in self.rows]}

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=None if sys.stdout.isatty() else 220)
        if not self.rows:
            console.print(f"no run directories under {self.root}", markup=False)
            return
        table = Table(title=f"{len(self.rows)} runs under {self.root}")
        table.add_column("name", overflow="fold")
        table.add_column("status")
        table.add_column("epochs", justify="right")
        table.add_column("best (validation)", justify="right")
        table.add_column("test", justify="right")
        table.add_column("wall time", justify="right")
        table.add_column("differs", overflow="fold")
        for r in self.rows:
            status = r["status"] + (" (pruned)" if r["pruned"] else "")
            epochs = f"{r['epochs_done']}/{r['epochs']}" if r["epochs"] else \
                str(r["epochs_done"] or 0)
            best = f"{r['monitor']} {r['best']:.4f}" if _finite(r["best"]) else ""
            if best and r["best_epoch"]:
                best += f" (epoch {r['best_epoch']})"
            metric, value = _test_value(r)
            test = f"{metric} {value:.4f}" if _finite(value) else ""
            items = [f"{k}={v}" for k, v in r["differs"].items()]
            if len(items) > MAX_SHOWN:  # (unrelated configs in one folder; --json has all)
                items = [*items[:MAX_SHOWN], f"(+{len(items) - MAX_SHOWN} more)"]
            table.add_row(r["name"], status, epochs, best, test, _seconds(r["wall_time"]),
                          " ".join(items))
        console.print(table)


def _seconds(value: Any) -> str:
    if not _finite(value):
        return ""
    return f"{value:.1f} s" if value < 120 else f"{value / 60:.1f} min"


def list_runs(root: str | Path = "runs", *, sort: str | None = None,
              filters: list[str] | None = None) -> RunsReport:
    """``bnn runs [DIR]``: every run directory under DIR, its status and results."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give the folder that holds run "
                        "directories (bnn train --output, default runs/) or a sweep folder")
    rows = [run_row(path, root) for path in find_runs(root)]
    _distinguish(rows)
    for item in filters or []:
        rows = _filter(rows, item)
    if sort:
        rows = _sort(rows, sort)
    return RunsReport(root, rows)
