"""Resolving what ``bnn eval``, ``bnn export`` and ``bnn predict`` are pointed at: a run
directory, a checkpoint it wrote, a Keras model file or an exported file, and the config
that builds its model and describes its data (``--config``, else the run's own).

The one target resolver: the three commands share :class:`TargetOptions` (the four
options they all take) and :func:`resolve` / :func:`load_trained` / :func:`checked_config`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnn_cli.assemble.check import CheckedConfig, check, load_run_config
from bnn_cli.assemble.job import Job, prepare, restore
from bnn_cli.assemble.vetting import read_weights, vet_model_file
from bnn_cli.config.schema import Config
from bnn_cli.errors import UserError
from bnn_cli.rundir.run import RUN_FILE, Checkpoint, RunDir, child_runs, find_run_dir

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass(frozen=True)
class TargetOptions:
    """What every command that reads a trained model takes beside the target."""

    checkpoint: str = "best"  # of a run directory: best (chosen on validation) or last
    data_dir: str | None = None  # TFDS data_dir; else the run's own, else TFDS's default
    config: str | Path | None = None  # builds the model; else the run's stored config
    trust_plugins: bool = False  # import the plugins a run's stored config names


@dataclass
class Target:
    """What a target (run directory, checkpoint, model file) resolved to."""

    job: Job  # the model built from the checked config; a model file's weights loaded
    run: RunDir | None
    checkpoint: Checkpoint | None  # for a run or checkpoint target (not yet restored)
    run_config: Config | None  # the run's own config, when it was the one used


def checked_config(target: Path, run: RunDir | None, options: TargetOptions) -> CheckedConfig:
    """The config of what ``target`` holds: ``options.config``, else its run's stored
    config (whose plugins are imported only with ``trust_plugins``); its final stage's."""
    if options.config is not None:
        return check(options.config, data_dir=options.data_dir).final
    if run is None:
        raise UserError(f"{target} is not inside a run directory, so nothing says which "
                        "model it holds, how its inputs are preprocessed or what its classes "
                        "are called; pass --config CONFIG.yaml (the config it was trained "
                        "with)")
    return load_run_config(run, options.data_dir, trust_plugins=options.trust_plugins).final


def resolve(target: str | Path, options: TargetOptions) -> Target:
    """A run directory, a checkpoint or a Keras model file, as ``bnn eval``, ``export``
    and ``predict`` take it: the model built from :func:`checked_config`; a model
    file gives only its weights (the checkpoint is not restored yet)."""

    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such file or directory; {WHAT_TARGETS_ARE}")
    if options.checkpoint not in ("best", "last"):
        raise UserError(f"--checkpoint must be 'best' or 'last', not {options.checkpoint!r}")
    kind, run = _classify(target)
    checked = checked_config(target, run, options)
    if kind == "model":
        # Fail closed: a file that names code is refused, though only its weights are read.
        vet_model_file(target)
    job = prepare(checked, run or RunDir(target.parent), for_training=False)
    run_config = checked.config if options.config is None else None
    if kind == "model":
        read_weights(job.model, target)
        return Target(job, run, None, run_config)
    assert run is not None  # (_classify: checkpoints and runs are inside a run)
    ckpt = (run.load_checkpoint(options.checkpoint) if target in (run.path, run.checkpoints)
            else run.resolve_checkpoint(target))
    return Target(job, run, ckpt, run_config)


def load_trained(target: str | Path, options: TargetOptions
                 ) -> tuple[Any, str | None, RunDir | None]:
    """The job (model built from the checked config) with the target's weights loaded,
    the checkpoint's name (None for a model file) and the run directory (if any)."""
    found = resolve(target, options)
    if found.checkpoint is None:
        return found.job, None, found.run
    restore(found.job, found.checkpoint, partial=True)
    return found.job, found.checkpoint.path.name, found.run


def is_exported_file(target: Path) -> bool:
    """A SavedModel folder, or a file outside a run's checkpoints (whose format the
    runtimes decide by its bytes); run directories and checkpoints are the rest."""
    if target.is_dir():
        return (target / "saved_model.pb").is_file()
    run = find_run_dir(target.parent)
    return run is None or run.checkpoints not in target.parents


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
        record = run.read_record()
    except UserError:
        return f"unreadable {RUN_FILE}"
    done, total = record.epochs_done or 0, record.epochs
    epochs = f"{done}/{total} epochs" if total else f"{done} epoch(s) done"
    return f"{record.status or 'unknown status'}, {epochs}"
