"""``bnn eval``: a run directory, a checkpoint or a model file -> metrics on a split."""

from __future__ import annotations

import builtins
import contextlib
import json
import sys
import time
import zipfile
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


def _load_model_file(path: Path):
    from bnn_cli import models
    from bnn_cli.registry import load_builtins

    load_builtins()  # every bnn_cli class is known before the file is vetted
    _refuse_code(path, _stored_config(path))
    try:
        # safe_mode: a saved model never runs code stored in it (e.g. Lambda bytecode).
        return models.load_model(path, compile=False, safe_mode=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"cannot load the model file {path}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _stored_config(path: Path) -> Any:
    """The architecture a model file stores (``.keras`` zip or legacy HDF5), or None."""
    with contextlib.suppress(Exception):  # unreadable files are reported by Keras below
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    return None


# Modules a saved model may name for its classes and functions. Keras imports whatever
# module a file names (running its top-level code) and hands back any attribute of it,
# and Keras's safe_mode covers neither that nor legacy HDF5 files, so the architecture is
# checked here first: code runs only from bnn_cli, Keras and the plugins a config names.
_SAFE_MODULES = ("keras", "tf_keras", "bnn_cli")


def _refuse_code(path: Path, config: Any) -> None:
    """Raise a UserError if loading ``config`` would run code stored in or named by it."""
    from bnn_cli._keras import keras

    def refuse(what: str) -> UserError:
        return UserError(f"refusing to load the model file {path}: it contains {what}, and "
                         "loading it would run code that the file names or stores; bnn "
                         "never does that. Rebuild the model from its config (e.g. evaluate "
                         "the run directory or a checkpoint) instead")

    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        name = node.get("class_name")
        if name in ("Lambda", "__lambda__"):
            raise refuse("a Lambda layer (Python code)")
        module = node.get("module")
        registered = node.get("registered_name")
        if isinstance(module, str) and not (
            module.split(".")[0] in _SAFE_MODULES
            # builtins: Keras looks the name up among its own functions ('relu'), but a
            # Python builtin ('eval', 'exec') would be returned as is.
            or (module == "builtins" and name == "function"
                and not hasattr(builtins, str(node.get("config"))))
            or (isinstance(registered, str)
                and keras.saving.get_registered_object(registered) is not None)
        ):
            raise refuse(f"{name!r} from the Python module {module!r}")
        stack.extend(node.values())


def evaluate_target(target: str | Path, *, split: str | None = None, checkpoint: str = "best",
                    data_dir: str | None = None, config: str | Path | None = None
                    ) -> EvalReport:
    """Evaluate a run directory / checkpoint / model file; write results into the run."""
    from bnn_cli.spec.checks import check
    from bnn_cli.training import load_run_config, prepare

    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such file or directory; {WHAT_TARGETS_ARE}")
    if checkpoint not in ("best", "last"):
        raise UserError(f"--checkpoint must be 'best' or 'last', not {checkpoint!r}")
    kind, run = _classify(target)
    if config is None and run is None:
        raise UserError(f"{target} is not inside a run directory, so nothing says which data "
                        "to evaluate on; pass --config CONFIG.yaml")
    checked = check(config, data_dir=data_dir) if config else load_run_config(run, data_dir)
    run_cfg = checked.config if config is None else None
    cfg = checked.config
    job = prepare(checked, run or RunDir(target.parent))
    split = split or cfg.spec.data.test_split
    if kind == "model":
        model = _load_model_file(target)
        model.compile(loss=cfg.spec.training.loss, metrics=list(cfg.spec.training.metrics))
        return _evaluate(model, cfg, job.data_dir, split, run, str(target), None, None)
    assert run is not None  # (_classify: checkpoints and runs are inside a run)
    ckpt = (run.load_checkpoint(checkpoint) if target in (run.path, run.checkpoints)
            else run.resolve_checkpoint(target))
    named = target.stem if target.name in ("best.json", "last.json") else checkpoint
    pointer = _pointer_naming(run, ckpt, prefer=named)
    selected = None
    if pointer == "best":
        selected = selection(run_cfg or _stored_run_config(run) or cfg)
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
        raise UserError(f"{target}: `bnn eval` does not read {kind} (outside a run's "
                        f"checkpoints/ folder); {WHAT_TARGETS_ARE}")
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


def _stored_run_config(run: RunDir) -> Config | None:
    """The run's own config (for how its checkpoints were chosen), or None if unreadable."""
    from bnn_cli.training import load_run_config

    with contextlib.suppress(UserError):
        return load_run_config(run).config
    return None


def _evaluate(model, cfg: Config, data_dir: str | None, split: str, run: RunDir | None,
              target: str, label: str | None, epoch: int | None) -> EvalReport:
    from bnn_cli import data

    ds = data.load_split(cfg.spec.data, split, training=False,
                         batch_size=cfg.spec.training.batch_size, seed=None, data_dir=data_dir)
    values = model.evaluate(ds, verbose=0, return_dict=True)
    report = EvalReport(target, split, {k: float(v) for k, v in values.items()}, label, epoch)
    if run is not None:
        out = run.file(f"eval-{safe_name(split)}-{label or 'model'}.json")
        atomic_write_json(out, {**report.as_dict(),
                                "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        report.written.append(str(out))
    return report
