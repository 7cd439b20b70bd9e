"""``bnn eval``: a run directory, a checkpoint or a model file -> metrics on a split."""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bnn_cli.errors import UserError
from bnn_cli.runs import (
    RUN_FILE,
    Checkpoint,
    RunDir,
    atomic_write_json,
    child_runs,
    find_run_dir,
    read_json,
    safe_name,
)
from bnn_cli.spec.schema import Config
from bnn_cli.vetting import read_weights, vet_model_file

if TYPE_CHECKING:
    from bnn_cli.training import Job

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass
class EvalReport:
    target: str
    split: str
    metrics: dict[str, float]
    checkpoint: str | None = None
    epoch: int | None = None
    pointer: str | None = None  # "best"/"last": the run's pointer that names the checkpoint
    selected_on: dict[str, str | None] | None = None  # the split and monitor that chose it
    warning: str | None = None
    written: list[str] = field(default_factory=list)
    unsaved: str | None = None  # why the report could not be written into the run

    def as_dict(self) -> dict[str, Any]:
        out = {"target": self.target, "split": self.split, "checkpoint": self.checkpoint,
               "epoch": self.epoch, "pointer": self.pointer, "selected_on": self.selected_on,
               "metrics": self.metrics}
        if self.warning:
            out["warning"] = self.warning
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
        if self.warning:
            sys.stderr.write(f"warning: {self.warning}\n")
        table = Table()
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in self.metrics.items():
            table.add_row(key, f"{value:.4f}")
        console.print(table)


def describe_selection(pointer: str | None, checkpoint: str,
                       selected_on: dict[str, str | None] | None) -> str:
    """``best checkpoint epoch-0003, chosen on split 'train[90%:]' by val_accuracy``."""
    if pointer == "best" and selected_on:
        return (f"best checkpoint {checkpoint}, chosen on split {selected_on['split']!r} "
                f"by {selected_on['monitor']}")
    if pointer == "last":
        return f"last checkpoint {checkpoint} (the latest epoch; not chosen by a metric)"
    return f"checkpoint {checkpoint} (named directly; no pointer of the run names it)"


def selection(cfg: Config) -> dict[str, str | None]:
    """The split and metric that choose a run's best checkpoint: ``training.monitor``,
    computed on the validation split (``val_*``) or else on the training split."""
    spec = cfg.spec
    monitor = spec.training.monitor
    split = spec.data.validation_split if monitor.startswith("val_") else spec.data.train_split
    return {"split": split, "monitor": monitor}


def selection_warning(cfg: Config, data_dir: str | None, selected_on: dict[str, str | None],
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

    from bnn_cli import data

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


@dataclass
class Target:
    """What a target (run directory, checkpoint, model file) resolved to."""

    job: Job  # the model built from the checked config; a model file's weights loaded
    run: RunDir | None
    checkpoint: Checkpoint | None  # for a run or checkpoint target (not yet restored)
    run_config: Config | None  # the run's own config, when it was the one used


def load_target(target: str | Path, *, checkpoint: str = "best", data_dir: str | None = None,
                config: str | Path | None = None, trust_plugins: bool = False) -> Target:
    """Resolve a target as ``bnn eval`` and ``bnn export`` take it.

    The model is always built from a checked config (``config``, else the run's stored
    one, whose plugins are imported only with ``trust_plugins``); a model file gives
    only its weights."""
    from bnn_cli.spec.checks import check
    from bnn_cli.training import load_run_config, prepare

    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such file or directory; {WHAT_TARGETS_ARE}")
    if checkpoint not in ("best", "last"):
        raise UserError(f"--checkpoint must be 'best' or 'last', not {checkpoint!r}")
    kind, run = _classify(target)
    if config is None and run is None:
        raise UserError(f"{target} is not inside a run directory, so nothing says which "
                        "model it holds or which data it is for; pass --config CONFIG.yaml")
    checked = (check(config, data_dir=data_dir) if config else
               load_run_config(run, data_dir, trust_plugins=trust_plugins)).final
    if kind == "model":
        # Fail closed: a file that names code is refused, though only its weights are read.
        vet_model_file(target)
    job = prepare(checked, run or RunDir(target.parent), for_training=False)
    run_config = checked.config if config is None else None
    if kind == "model":
        read_weights(job.model, target)
        return Target(job, run, None, run_config)
    assert run is not None  # (_classify: checkpoints and runs are inside a run)
    ckpt = (run.load_checkpoint(checkpoint) if target in (run.path, run.checkpoints)
            else run.resolve_checkpoint(target))
    return Target(job, run, ckpt, run_config)


def evaluate_target(target: str | Path, *, split: str | None = None, checkpoint: str = "best",
                    data_dir: str | None = None, config: str | Path | None = None,
                    trust_plugins: bool = False) -> EvalReport:
    """Evaluate a run directory / checkpoint / model file; write results into the run."""
    found = load_target(target, checkpoint=checkpoint, data_dir=data_dir, config=config,
                        trust_plugins=trust_plugins)
    job, run, ckpt = found.job, found.run, found.checkpoint
    split = split or job.config.spec.data.test_split
    if ckpt is None:
        return _evaluate(job.model, job.config, job.data_dir, split, run, str(target), None,
                         None)
    target = Path(target)
    named = target.stem if target.name in ("best.json", "last.json") else checkpoint
    pointer = _pointer_naming(run, ckpt, prefer=named)
    selected = None
    if pointer == "best":
        selected = selection(found.run_config or _stored_run_config(run, trust_plugins)
                             or job.config)
    return evaluate_checkpoint(job, ckpt, split, str(target), pointer, selected)


def evaluate_checkpoint(job: Job, checkpoint: Checkpoint, split: str, target: str,
                        pointer: str | None = None,
                        selected_on: dict[str, str | None] | None = None) -> EvalReport:
    """Load ``checkpoint`` into the job's model and evaluate it on ``split`` (the report
    is also written into the job's run directory)."""
    from bnn_cli.training import restore

    restore(job, checkpoint, partial=True)
    report = _evaluate(job.model, job.config, job.data_dir, split, job.run, target,
                       checkpoint.path.name, checkpoint.state.get("epoch"))
    report.pointer, report.selected_on = pointer, selected_on
    if selected_on is not None:
        report.warning = selection_warning(job.config, job.data_dir, selected_on, split)
    return report


WHAT_TARGETS_ARE = ("give a run directory (the folder `bnn train` created, e.g. "
                    "runs/quickstart-20260101-120000), a checkpoint folder it wrote "
                    "(RUN/checkpoints/epoch-0003, or a file in it) or a model file ("
                    + ", ".join(MODEL_SUFFIXES) + ")")


def _classify(target: Path) -> tuple[str, RunDir | None]:
    """What an existing ``target`` is: ("model" | "checkpoint" | "run", its run directory);
    a UserError saying what a target may be for anything else."""
    if target.is_file():
        run = find_run_dir(target.parent)
        if target.suffix in MODEL_SUFFIXES:
            return "model", run
        if run is not None and run.checkpoints in target.parents:
            return "checkpoint", run
        kind = f"'{target.suffix}' files" if target.suffix else "files without a suffix"
        raise UserError(f"{target}: `bnn eval` (or `bnn export`) does not read {kind} "
                        f"(outside a run's checkpoints/ folder); {WHAT_TARGETS_ARE}")
    run = find_run_dir(target)
    if run is None:
        raise _not_a_run(target)
    if target in (run.path, run.checkpoints):
        return "run", run
    if target.parent == run.checkpoints:
        return "checkpoint", run
    raise UserError(f"{target} is a folder inside the run directory {run.path} but not a "
                    "checkpoint; give the run directory itself or one of its "
                    "checkpoints/epoch-NNNN folders")


def _not_a_run(folder: Path) -> UserError:
    runs = child_runs(folder)
    if runs:
        shown = "; ".join(f"{r.path.name} ({_run_summary(r)})" for r in runs[-_LISTED:])
        more = f" (the last {_LISTED} of {len(runs)} by name)" if len(runs) > _LISTED else ""
        return UserError(f"{folder} holds run directories, it is not one itself; its runs"
                         f"{more}: {shown}. Pass one of them, e.g. "
                         f"`bnn eval {runs[-1].path}`")
    try:
        empty = not any(folder.iterdir())
    except OSError as exc:
        return UserError(f"cannot read the folder {folder}: {exc.strerror or exc}")
    what = "is empty" if empty else f"is not a run directory (it has no {RUN_FILE})"
    return UserError(f"{folder} {what}, so there is nothing to evaluate; {WHAT_TARGETS_ARE}")


_LISTED = 20  # run directories named in the message about a folder of runs


def _run_summary(run: RunDir) -> str:
    """``completed, 3/3 epochs`` from a run's run.json (``unreadable run.json`` if it is not)."""
    try:
        status = run.read_status()
    except UserError:
        status = None
    if not isinstance(status, dict):
        return f"unreadable {RUN_FILE}"
    done, total = status.get("epochs_done", 0), status.get("epochs")
    epochs = f"{done}/{total} epochs" if total else f"{done} epoch(s) done"
    return f"{status.get('status', 'unknown status')}, {epochs}"


def _pointer_naming(run: RunDir, checkpoint: Checkpoint, *, prefer: str) -> str | None:
    """Which pointer (``prefer`` first, then the other) names ``checkpoint``, or None."""
    for which in (prefer, *({"best", "last"} - {prefer})):
        with contextlib.suppress(UserError, KeyError, TypeError):
            if read_json(run.checkpoints / f"{which}.json")["checkpoint"] == checkpoint.path.name:
                return which
    return None


def _stored_run_config(run: RunDir, trust_plugins: bool) -> Config | None:
    """The run's own config (for how its checkpoints were chosen), or None if unreadable
    (or if it names plugins that are not trusted)."""
    from bnn_cli.training import load_run_config

    with contextlib.suppress(UserError):
        return load_run_config(run, trust_plugins=trust_plugins).final.config
    return None


def _evaluate(model, cfg: Config, data_dir: str | None, split: str, run: RunDir | None,
              target: str, label: str | None, epoch: int | None) -> EvalReport:
    from bnn_cli import data

    ds = data.load_split(cfg.spec.data, split, training=False,
                         batch_size=cfg.spec.training.batch_size, seed=None, data_dir=data_dir)
    values = model.evaluate(ds, verbose=0, return_dict=True)
    report = EvalReport(target, split, {k: float(v) for k, v in values.items()}, label, epoch)
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
