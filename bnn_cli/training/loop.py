"""Training: a validated config -> model + data -> epochs -> the run directory.

Each stage is one ``model.fit`` over all its epochs (one data iterator, one validation
set-up), and each epoch's data order and augmentation are drawn in-graph from
``(seed, epoch)`` alone: a run resumed from a checkpoint sees exactly the batches an
uninterrupted run would have seen. After each epoch, in a callback, the checkpoint
(weights, optimizer and the loop's own state: history, best value, early-stopping wait)
is written atomically, then the pointers, then the metrics files, then ``run.json``.

SIGINT/SIGTERM let the current step finish, save a checkpoint, mark the run
interrupted and exit with 130/143. A non-finite loss stops the run, keeps the last good
checkpoint and marks the run failed.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bnn_cli._keras import keras, tf
from bnn_cli.assemble import strategy as distribute
from bnn_cli.assemble.check import CheckedConfig, CheckedStage, check, load_run_config
from bnn_cli.assemble.job import (
    Job,
    carry_weights,
    check_training_step,
    prepare,
    restore,
    selected_checkpoint,
    stage_job,
    stage_pointer,
    start_pointer,
)
from bnn_cli.config.schema import Config
from bnn_cli.config.source import flattened_text
from bnn_cli.data import pipeline as datamod
from bnn_cli.errors import UserError
from bnn_cli.models import summary, summary_data
from bnn_cli.rundir.run import (
    CONFIG,
    OVERRIDES,
    RUN_FILE,
    RunDir,
    atomic_write_json,
    atomic_write_text,
)
from bnn_cli.training.callbacks import Epochs, Guard, Progress, signals_to
from bnn_cli.training.hparams import write_hparams
from bnn_cli.training.outcomes import (
    TrainResult,
    already_completed,
    crashed,
    ending_recorded,
    fail_nan,
    finish,
    interrupted,
)
from bnn_cli.training.state import LoopState, training_done


def _stage_data(job: Job, state: LoopState, end: int) -> tuple[tf.data.Dataset, Any]:
    """The stage's remaining epochs of training data (one dataset) and the validation
    split; each epoch's batches depend only on the seed and the epoch's number."""
    spec = job.config.spec
    training = spec.training

    def epochs(batch_size: int, shard: datamod.Shard | None = None) -> tf.data.Dataset:
        return datamod.training_epochs(spec.data, first=state.epoch, end=end,
                                       steps=job.steps_per_epoch, batch_size=batch_size,
                                       seed=training.seed, data_dir=job.data_dir,
                                       shard=shard)

    workers = distribute.workers()
    files = datamod.training_files(spec.data, job.data_dir) if workers > 1 else 0
    if workers > 1 and files >= workers:
        # Each worker reads and decodes only its own files (TensorFlow's way to shard
        # by files: a pipeline per worker, from distribute_datasets_from_function).
        def for_worker(context: tf.distribute.InputContext) -> tf.data.Dataset:
            shard = datamod.Shard(context.input_pipeline_id, context.num_input_pipelines)
            sys.stderr.write(f"worker {shard.index} of {shard.count} reads files "
                             f"{shard.index}, {shard.index + shard.count}, ... of the "
                             f"{files} of {spec.data.train_split}\n")
            return epochs(context.get_per_replica_batch_size(training.batch_size), shard)

        train = distribute.strategy().distribute_datasets_from_function(for_worker)
        sharding = {"by": "files", "files": files, "workers": workers}
    else:
        train = epochs(training.batch_size)
        sharding = {"by": "examples"}  # (every worker reads the whole split)
    job.run.write_record(runtime={**distribute.describe(spec.runtime), "input": sharding})
    val = None
    if spec.data.validation_split:
        val = datamod.load_split(spec.data, spec.data.validation_split, training=False,
                                 batch_size=training.batch_size, seed=None,
                                 data_dir=job.data_dir)
    return train, val


def run_loop(job: Job, state: LoopState, stages: list[CheckedStage] | None = None) -> TrainResult:
    """Train from ``state`` to the end: the configured epochs (or an early stop) of each
    stage in turn, each starting from the weights the one before selected; then finish."""
    stages = stages or []
    while True:
        # (planned epochs: the stages still to come may stop early)
        total = state.stage_start + sum(s.checked.spec.training.epochs
                                        for s in stages[state.stage:]) if stages else None
        final = state.stage + 1 >= len(stages)
        ended = _train_stage(job, state, total, final=final)
        if ended is not None:  # interrupted or failed
            return ended
        if final:
            return finish(job, state)
        job = _next_stage(job, state, stages)


def _train_stage(job: Job, state: LoopState, total: int | None = None, *,
                 final: bool = True) -> TrainResult | None:
    """The epochs of ``job``'s stage (its config's epochs) from ``state``, in one
    ``fit``; a result if the run stopped before they were done. ``total``: the run's
    planned epochs; ``final``: whether this stage trains the run's final model."""
    training = job.config.spec.training
    total = total or training.epochs
    guard = Guard()
    tensorboard = keras.callbacks.TensorBoard(str(job.run.file("tensorboard")),
                                              write_graph=False, profile_batch=0)
    epochs = Epochs(job, state, guard, final=final)
    callbacks = [guard, Progress(total, job.steps_per_epoch),
                 tensorboard, epochs]  # (the guard first, the bookkeeping last)
    state.history = state.history or []
    job.run.write_record(status="running", epochs=total, **epochs.stage)
    with signals_to(guard):
        if not training_done(training, state):
            end = state.stage_start + training.epochs
            train, val = _stage_data(job, state, end)
            try:
                job.fit_model.fit(train, validation_data=val, initial_epoch=state.epoch,
                                  epochs=end, steps_per_epoch=job.steps_per_epoch,
                                  verbose=0, callbacks=callbacks)
            except Exception as exc:
                if epochs.recording:  # (the bookkeeping's own errors, as they are)
                    raise
                raise crashed(job, state, exc) from None
    if guard.bad_loss is not None:
        return fail_nan(job, state, guard)
    if guard.signal is not None:
        return interrupted(job, state, guard)
    return None


def _next_stage(job: Job, state: LoopState, stages: list[CheckedStage]) -> Job:
    """Keep what the finished stage selected, then start the next from the weights its
    ``from`` names: that selection (best), the finished stage's last epoch, or none."""
    done, following = stages[state.stage], stages[state.stage + 1]
    start = following.start
    job.run.point(stage_pointer(done), state.best_epoch or state.epoch)
    begin = None
    if start == "best":
        begin = selected_checkpoint(job.run, done)
    elif start == "last":
        begin = job.run.load_checkpoint("last")
    if begin is not None:
        restore(job, begin, partial=True)
        job.run.point(start_pointer(following), begin.epoch)  # (kept, and named)
    state.next_stage()
    new = stage_job(job.run, stages[state.stage], stages)
    if begin is None:
        sys.stderr.write(f"stage {new.stage.name!r} starts from fresh weights (from: none)\n")
        return new
    carried, fresh = carry_weights(job.model, new.model)
    which = "what" if start == "best" else "the last epoch of"
    sys.stderr.write(f"stage {new.stage.name!r} starts from {begin.path.name}, {which} "
                     f"stage {done.name!r} (from: {start}; {carried} layers' weights"
                     + (f"; new: {', '.join(fresh)}" if fresh else "") + ")\n")
    return new


def _write_run_files(run: RunDir, config: Config, overrides: list[str], model: keras.Model,
                     plugins: list[str]) -> None:
    original = flattened_text(config.path) if config.path else ""
    resolved = {**config.spec.model_dump(mode="json"), "name": config.name}
    run.write_config(original, resolved, overrides, plugins)
    lines: list[str] = []
    summary(model, print_fn=lines.append)
    atomic_write_text(run.file("summary.txt"), "\n".join(lines) + "\n")
    atomic_write_json(run.file("summary.json"), summary_data(model).as_dict())


def train_from_config(config_path: str | Path, overrides: list[str], *,
                      output_root: str | Path = "runs", data_dir: str | None = None,
                      plugins: list[str] | None = None) -> TrainResult:
    """``bnn train CONFIG``: check, build, create a run directory and train."""
    plugins = list(plugins or [])
    checked = check(config_path, overrides, plugins=plugins, data_dir=data_dir,
                    start_runtime=True)
    with _worker_output(output_root) as output_root:
        # Build and trace (every stage's) before anything is written.
        job = _first_job(checked, RunDir(Path(output_root)))
        config = checked.config

        def fill(run: RunDir) -> None:
            run.write_record(status="starting", name=config.name,
                             config_path=str(Path(config_path).resolve()),
                             data_dir=_absolute(checked.data_dir),
                             started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                             runtime=distribute.describe(config.spec.runtime))
            _write_run_files(run, config, overrides, job.model, plugins)
            write_hparams(run, config, overrides)  # once, for TensorBoard's HParams

        run = job.run = RunDir.create(output_root, config.name, fill)  # (locked)
        with ending_recorded(run):
            if distribute.is_chief():
                sys.stderr.write(f"run directory: {run.path}\n")
            return run_loop(job, LoopState(), checked.stages)


def _absolute(folder: str | None) -> str | None:
    """A data_dir the run can find again from any working directory."""
    return str(Path(folder).expanduser().resolve()) if folder else None


@contextlib.contextmanager
def _worker_output(output_root: str | Path) -> Iterator[str | Path]:
    """Where this process writes its run directory: ``output_root`` for the chief (and
    outside a cluster); for another worker of a multi-worker run, a temporary folder,
    removed when it ends. Such a worker must still run every step and write every
    checkpoint (they are collective operations), but nothing it writes is the run's."""
    if distribute.is_chief():
        yield output_root
        return
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="bnn-worker-")
    cluster = distribute.current_cluster()
    sys.stderr.write(f"{cluster.task} of {cluster.num_workers} workers: the chief writes "
                     "the run directory; this worker's copy goes to a temporary folder, "
                     "deleted at the end\n")
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _first_job(checked: CheckedConfig, run: RunDir) -> Job:
    """The job that trains first, after building and tracing each stage's (a stage's
    mistakes must stop the run before it starts, not after the stages before it)."""
    if not checked.stages:
        job = prepare(checked, run)
        check_training_step(job)
        return job
    for stage in reversed(checked.stages):  # (the first stage's job is built last)
        job = stage_job(run, stage, checked.stages, teacher_weights=False)
        check_training_step(job)
    return job


def resume_run(run_path: str | Path, *, data_dir: str | None = None,
               config_path: str | Path | None = None,
               trust_plugins: bool = False) -> TrainResult:
    """``bnn train [CONFIG] --resume RUN_DIR``: continue from the last good checkpoint,
    with the run's stored config (a given ``config_path`` is only compared with it).
    The run's lock is taken before anything is written; a live holder is an error."""
    run = RunDir.open(run_path)
    if config_path is not None:
        _warn_if_config_differs(run, Path(config_path))
    if run.effective_status() == "completed":  # (before the lock: a no-op writes nothing)
        return already_completed(run)
    # Checking writes nothing, so a config (or plugin) refused here leaves the run as it
    # was: interrupted, resumable once the problem is fixed.
    checked = load_run_config(run, data_dir, trust_plugins=trust_plugins,
                              start_runtime=True)
    if not distribute.is_chief():
        return _resume_worker(run, checked)
    run.lock()
    with ending_recorded(run):
        try:
            status = run.read_record().status
        except UserError as exc:  # run.json is rewritten below; the checkpoints hold the state
            sys.stderr.write(f"warning: {exc}; it will be rewritten\n")
            status = None
        if status == "completed":  # (completed while we took the lock)
            return already_completed(run)
        return _resume(run, checked)


def _resume_worker(run: RunDir, checked: CheckedConfig) -> TrainResult:
    """A non-chief worker's resume: the chief holds the run (its lock, its files); this
    worker trains on from the same checkpoint, in a temporary copy of the run's
    checkpoints (it reads the run directory, so on several hosts the output folder must
    be shared, as TensorFlow's own BackupAndRestore requires of its folder)."""
    import shutil

    with _worker_output("") as folder:
        copy = RunDir(Path(folder) / run.path.name)
        try:
            copy.path.mkdir()
            for name in (CONFIG, OVERRIDES, RUN_FILE):
                if run.file(name).is_file():
                    shutil.copy2(run.file(name), copy.file(name))
            if run.checkpoints.is_dir():
                shutil.copytree(run.checkpoints, copy.checkpoints)
        except OSError as exc:
            raise UserError(f"this worker cannot read the run directory {run.path} "
                            f"({exc.strerror or exc}); every worker resumes from the "
                            "chief's checkpoints, so the output folder must be visible "
                            "to all of them (a shared file system)") from None
        copy.lock()
        try:
            return _resume(copy, checked)
        finally:
            copy.unlock()


def _resume(run: RunDir, checked: CheckedConfig) -> TrainResult:
    """Restore the last good checkpoint into the job of its stage and train on from it."""
    checkpoint = run.load_checkpoint("last") if any(run.checkpoints.glob("epoch-*")) \
        else None
    # (Without one, the run stopped before its first epoch ended: start over in place.)
    state = LoopState.from_dict(checkpoint.state) if checkpoint else LoopState()
    if checked.stages and state.stage >= len(checked.stages):
        raise UserError(f"{checkpoint.path} is of stage {state.stage + 1}, but the run's "
                        f"config has {len(checked.stages)} stages")
    job = (stage_job(run, checked.stages[state.stage], checked.stages) if checked.stages
           else prepare(checked, run))
    check_training_step(job)  # (as a new run does: the same traces, the same numbers)
    saved_at = None
    if checkpoint is not None:
        restore(job, checkpoint)
        run.align_pointers(state.epoch, state.best_epoch)
        saved_at = checkpoint.saved_at
    # The history comes from the checkpoint's state, so epochs after it (written before
    # the kill, or after a corrupt checkpoint that was skipped) are dropped here, in the
    # metrics files and in TensorBoard's, and appear again, once, when they are re-run.
    run.write_metrics(state.history or [])
    run.drop_events_after(saved_at)
    run.write_record(status="running", epochs_done=state.epoch)
    sys.stderr.write(f"resuming {run.path} after epoch {state.epoch}"
                     + (f" (stage {job.stage.name!r})" if job.stage else "") + "\n")
    # (A stage whose epochs are done goes on to the next, or, killed while finishing, to
    # finishing.)
    return run_loop(job, state, checked.stages)


def _warn_if_config_differs(run: RunDir, given: Path) -> None:
    """CONFIG given with --resume is not read: say so if it differs from the stored one."""
    stored = run.config_file
    if not stored.is_file():
        return
    try:
        same = given.read_bytes() == stored.read_bytes()
    except OSError as exc:
        same, why = False, f"cannot be read ({exc.strerror or exc})"
    else:
        why = f"differs from the run's stored {stored}"
    if not same:
        sys.stderr.write(f"warning: {given} {why}; resuming uses the stored config and "
                         f"ignores {given} (a run always continues with the config it "
                         "started with; start a new run to train with another config)\n")
