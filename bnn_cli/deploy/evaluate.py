"""``bnn eval``: a run directory, a checkpoint or a model file -> metrics on a split.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from bnn_cli.assemble.check import check, load_run_config
from bnn_cli.assemble.job import Job, prepare
from bnn_cli.assemble.vetting import read_weights, vet_model_file
from bnn_cli.config.monitor import selection
from bnn_cli.config.schema import Config
from bnn_cli.errors import UserError
from bnn_cli.rundir.run import (
    RUN_FILE,
    Checkpoint,
    RunDir,
    child_runs,
    find_run_dir,
    read_json,
)
from bnn_cli.training.evaluation import EvalReport, evaluate, evaluate_checkpoint

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


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
        return evaluate(job.model, job.config, job.data_dir, split, run, str(target), None,
                         None)
    target = Path(target)
    named = target.stem if target.name in ("best.json", "last.json") else checkpoint
    pointer = _pointer_naming(run, ckpt, prefer=named)
    selected = None
    if pointer == "best":
        selected = selection(found.run_config or _stored_run_config(run, trust_plugins)
                             or job.config)
    return evaluate_checkpoint(job, ckpt, split, str(target), pointer, selected)


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

    with contextlib.suppress(UserError):
        return load_run_config(run, trust_plugins=trust_plugins).final.config
    return None
