"""Evaluating a trained model on a split: the test evaluation that ends a run, and what
``bnn eval`` reports (:mod:`bnn_cli.deploy.evaluate` resolves its targets). The report
says which checkpoint it is, how it was chosen, and warns when the split it was chosen
on overlaps the split evaluated.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from bnn_cli.assemble.job import Job, restore
from bnn_cli.config.monitor import tie_breaker, tied_epochs
from bnn_cli.config.schema import Config
from bnn_cli.data import pipeline as data
from bnn_cli.errors import UserError
from bnn_cli.rundir.run import Checkpoint, RunDir, atomic_write_json, safe_name


@dataclass
class EvalReport:
    target: str
    split: str
    metrics: dict[str, float]
    checkpoint: str | None = None
    epoch: int | None = None
    pointer: str | None = None  # "best"/"last": the run's pointer that names the checkpoint
    selected_on: dict[str, Any] | None = None  # the split and monitor that chose it (ties)
    warning: str | None = None
    test_time_augmentation: str | None = None  # how each example was scored, if not once
    written: list[str] = field(default_factory=list)
    unsaved: str | None = None  # why the report could not be written into the run

    def as_dict(self) -> dict[str, Any]:
        out = {"target": self.target, "split": self.split, "checkpoint": self.checkpoint,
               "epoch": self.epoch, "pointer": self.pointer, "selected_on": self.selected_on,
               "metrics": self.metrics}
        if self.warning:
            out["warning"] = self.warning
        if self.test_time_augmentation:
            out["test_time_augmentation"] = self.test_time_augmentation
        return out

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        where = f" ({self.checkpoint}, epoch {self.epoch})" if self.checkpoint else ""
        console = Console()
        console.print(f"{self.target}{where} on split {self.split!r}", soft_wrap=True,
                      markup=False)
        if self.checkpoint:
            console.print(describe_selection(self.pointer, self.checkpoint, self.selected_on),
                          soft_wrap=True, markup=False)
        if self.test_time_augmentation:
            console.print(describe_scoring(self.test_time_augmentation), markup=False)
        if self.warning:
            sys.stderr.write(f"warning: {self.warning}\n")
        table = Table()
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in self.metrics.items():
            table.add_row(key, f"{value:.4f}")
        console.print(table)


def describe_selection(pointer: str | None, checkpoint: str,
                       selected_on: dict[str, Any] | None) -> str:
    """``best checkpoint epoch-0003, chosen on split 'train[90%:]' by val_accuracy``."""
    if pointer == "best" and selected_on:
        tie = ""
        if selected_on.get("tied_with"):
            epochs = ", ".join(str(e) for e in selected_on["tied_with"])
            tie = (f" (a tie: epoch(s) {epochs} reached the same {selected_on['monitor']}; "
                   f"{selected_on.get('tie_broken_by') or 'the first'} decided)")
        return (f"best checkpoint {checkpoint}, chosen on split {selected_on['split']!r} "
                f"by {selected_on['monitor']}{tie}")
    if pointer == "last":
        return f"last checkpoint {checkpoint} (the latest epoch; not chosen by a metric)"
    return f"checkpoint {checkpoint} (named directly; no pointer of the run names it)"


def describe_scoring(test_time_augmentation: str) -> str:
    """How a scored example was scored (data.test_time_augmentation)."""
    return (f"scored with test-time augmentation ({test_time_augmentation}): the mean "
            "over each image and its mirror image")


def selection_warning(cfg: Config, data_dir: str | None, selected_on: dict[str, Any],
                      split: str) -> str | None:
    """A warning when the split a checkpoint was chosen on shares examples with ``split``
    (the metric on ``split`` is then optimistic), else None."""
    chosen_on = selected_on.get("split")
    if chosen_on is None or not _splits_overlap(cfg, data_dir, chosen_on, split):
        return None
    same = "is" if chosen_on == split else "overlaps"
    return (f"the checkpoint was selected on split {chosen_on!r}, which {same} the evaluated "
            f"split {split!r}, so this metric is optimistic; hold validation data out of the "
            "training split instead, e.g. data: {train_split: 'train[:90%]', "
            "validation_split: 'train[90%:]', test_split: test}")


def _splits_overlap(cfg: Config, data_dir: str | None, a: str, b: str) -> bool:
    """Whether two TFDS split specs (slices like ``train[90%:]`` included) share examples;
    unparseable specs overlap only if they are equal."""
    from types import SimpleNamespace

    import tensorflow_datasets as tfds


    if a == b:
        return True
    try:
        sizes = data.dataset_info(cfg.spec.data, data_dir).split_sizes
        infos = {name: SimpleNamespace(num_examples=n) for name, n in sizes.items()}
        ranges = [[(r.splitname, r.from_ or 0, sizes[r.splitname] if r.to is None else r.to)
                   for r in tfds.core.ReadInstruction.from_spec(spec).to_absolute(infos)]
                  for spec in (a, b)]
    except (UserError, ValueError, KeyError, AssertionError, AttributeError):
        return False
    return any(na == nb and sa < eb and sb < ea
               for na, sa, ea in ranges[0] for nb, sb, eb in ranges[1])


def evaluate_checkpoint(job: Job, checkpoint: Checkpoint, split: str, target: str,
                        pointer: str | None = None,
                        selected_on: dict[str, Any] | None = None) -> EvalReport:
    """Load ``checkpoint`` into the job's model and evaluate it on ``split`` (the report
    is also written into the job's run directory). A best checkpoint whose monitor value
    other epochs reached too says so (``selected_on``'s ``tied_with``)."""
    restore(job, checkpoint, partial=True)
    epoch = checkpoint.state.get("epoch")
    report = evaluate(job.scoring_model, job.config, job.data_dir, split, None, target,
                      checkpoint.path.name, epoch)
    if selected_on is not None and pointer == "best":
        monitor = selected_on["monitor"]
        tied = tied_epochs(job.run.read_history(), monitor, epoch)
        if tied:
            selected_on = {**selected_on, "tied_with": tied,
                           "tie_broken_by": tie_breaker(monitor)}
    report.pointer, report.selected_on = pointer, selected_on
    if selected_on is not None:
        report.warning = selection_warning(job.config, job.data_dir, selected_on, split)
    _save(report, job.run)
    return report


def evaluate(model, cfg: Config, data_dir: str | None, split: str, run: RunDir | None,
              target: str, label: str | None, epoch: int | None) -> EvalReport:
    ds = data.load_split(cfg.spec.data, split, training=False,
                         batch_size=cfg.spec.training.batch_size, seed=None, data_dir=data_dir)
    values = model.evaluate(ds, verbose=0, return_dict=True)
    report = EvalReport(target, split, {k: float(v) for k, v in values.items()}, label, epoch,
                        test_time_augmentation=cfg.spec.data.test_time_augmentation)
    if run is not None:
        _save(report, run)
    return report


def _save(report: EvalReport, run: RunDir) -> None:
    """Write the report into the run; if that fails (a read-only run directory, someone
    else's), the result is not lost: ``report.unsaved`` says why, for after it."""
    out = run.file(f"eval-{safe_name(report.split)}-{report.checkpoint or 'model'}.json")
    try:
        atomic_write_json(out, {**report.as_dict(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
    except UserError as exc:
        cause = exc.__context__  # (the writer's OSError, when it raised from one)
        why = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
        report.unsaved = f"could not write {out} ({why}); the result above is not saved"
        return
    report.written.append(str(out))
