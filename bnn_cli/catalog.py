"""What the registry holds, for people: the tables behind ``bnn list-*``.

Importing this module imports every module that registers built-in components, so the
listing is complete; it reads the one registry like everything else.
"""

from __future__ import annotations

import importlib
import sys

from rich.console import Console
from rich.table import Table

from bnn_cli.registry import REGISTRY, Entry

_COMPONENT_MODULES = ("quantizers", "layers", "constraints", "activations", "metrics",
                      "optimizers", "callbacks")


def load_builtins() -> None:
    """Import every module that registers built-in components."""
    for name in _COMPONENT_MODULES:
        importlib.import_module(f"bnn_cli.{name}")


def entries(kind: str) -> list[Entry]:
    load_builtins()
    return REGISTRY.entries(kind)


def _params(entry: Entry) -> str:
    parts = []
    for p in entry.params:
        if p.name == "metrics":  # every quantizer takes it; not worth a column entry
            continue
        parts.append(p.name if p.required else f"{p.name}={p.default!r}")
    return ", ".join(parts)


def print_table(kind: str, items: list[Entry], console: Console | None = None) -> None:
    # Piped output gets a wide table instead of rich's 80-column default.
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    table = Table(title=f"{len(items)} {kind}s", show_lines=False)
    table.add_column("name", style="bold")
    table.add_column("aliases")
    if kind == "quantizer":
        table.add_column("bits", justify="right")
    table.add_column("parameters")
    table.add_column("summary")
    for e in items:
        name = e.name if e.builtin else f"{e.name} (custom)"
        row = [name, ", ".join(e.aliases)]
        if kind == "quantizer":
            row.append("varies" if e.precision is None else str(e.precision))
        params = _params(e)
        row += [params if len(params) < 120 else params[:117] + "...", e.summary]
        table.add_row(*row)
    console.print(table)
