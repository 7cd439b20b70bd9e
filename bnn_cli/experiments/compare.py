"""``bnn compare RUN...``: runs' curves on shared axes, and how their configs differ."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnn_cli.config.flat import text as value_text
from bnn_cli.errors import UserError
from bnn_cli.experiments.configs import differences, resolved_config
from bnn_cli.experiments.table import run_row
from bnn_cli.plots import plot_compare
from bnn_cli.rundir.run import RunDir


@dataclass
class CompareReport:
    runs: list[dict[str, Any]]  # label, path, status, best, test
    differences: list[dict[str, Any]]  # key, values (one per run; None: absent)
    output: Path | None = None
    warnings: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"runs": self.runs, "differences": self.differences,
                "output": str(self.output) if self.output else None,
                "warnings": self.warnings}

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        console = Console(width=None if sys.stdout.isatty() else 220)
        runs = Table(title="runs")
        for column in ("run", "status", "epochs", "best (validation)", "test"):
            runs.add_column(column, overflow="fold")
        for r in self.runs:
            best = f"{r['monitor']} {r['best']:.4f} (epoch {r['best_epoch']})" \
                if isinstance(r["best"], (int, float)) else ""
            test = "  ".join(f"{k} {v:.4f}" for k, v in r["test"].items()
                             if not k.startswith("flip_ratio"))
            runs.add_row(r["label"], r["status"], str(r["epochs_done"]), best, test)
        console.print(runs)
        if not self.differences:
            console.print("the resolved configs are the same", markup=False)
        else:
            table = Table(title=f"{len(self.differences)} config keys differ "
                                "(config.resolved.yaml)")
            table.add_column("key", overflow="fold")
            for r in self.runs:
                table.add_column(r["label"], overflow="fold")
            for d in self.differences:
                table.add_row(d["key"], *("(absent)" if v is None else v for v in d["values"]))
            console.print(table)
        for warning in self.warnings:
            sys.stderr.write(f"warning: {warning}\n")
        if self.output:
            console.print(f"wrote {self.output}", markup=False, soft_wrap=True)


def _labels(paths: list[Path]) -> list[str]:
    """Each run's folder name, with its parents where names repeat."""
    labels = [p.resolve().name for p in paths]
    depth = 1
    while len(set(labels)) < len(labels) and depth < 4:
        depth += 1
        labels = ["/".join(p.resolve().parts[-depth:]) for p in paths]
    return labels


DEFAULT_OUTPUT = Path("compare.png")


def unused_name(path: Path = DEFAULT_OUTPUT) -> Path:
    """``path``, else ``compare-2.png``, ``compare-3.png``, ...: the first name not taken.
    A picture the user did not name must never replace a file, an earlier comparison
    included; one the user named (``-o``) may."""
    candidate, n = path, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = path.with_name(f"{path.stem}-{n}{path.suffix}")
    return candidate


def compare_runs(targets: list[Path], output: Path | None = None, *,
                 picture: bool = True) -> CompareReport:
    """Draw the runs' curves into ``output`` (replaced if it exists; not given: a new
    ``compare.png``, ``compare-2.png``, ... in the working folder; ``picture=False``:
    none) and list the resolved config keys whose values differ, with each run's value."""
    if not targets:
        raise UserError("give the run directories to compare, e.g. bnn compare "
                        "runs/a runs/b")
    paths = [RunDir.open(t).path for t in targets]
    if len({p.resolve() for p in paths}) < len(paths):
        raise UserError("a run directory is given twice; give each run once")
    labels = _labels(paths)
    configs = [resolved_config(p) for p in paths]
    warnings = [f"{p} has no readable config.resolved.yaml; its config is not compared"
                for p, c in zip(paths, configs, strict=True) if c is None]
    runs, plotted = [], []
    for label, path in zip(labels, paths, strict=True):
        row = run_row(path, path.parent)
        runs.append({"label": label, "path": str(path), "status": row["status"],
                     "epochs_done": row["epochs_done"], "monitor": row["monitor"],
                     "best": row["best"], "best_epoch": row["best_epoch"],
                     "test": row["test"]})
        history = RunDir(path).read_history()
        if history:
            plotted.append({"label": label, "history": history, "monitor": row["monitor"],
                            "mode": row["mode"]})
        else:
            warnings.append(f"{path} has logged no epoch yet (no metrics.jsonl rows)")
    keys = differences(configs)
    diffs = [{"key": k, "values": [None if c is None or k not in c else value_text(c[k])
                                   for c in configs]} for k in keys]
    report = CompareReport(runs, diffs, warnings=warnings)
    if picture and plotted:

        output = output if output is not None else unused_name()
        plot_compare(plotted, output)
        report.output = Path(output)
    return report
