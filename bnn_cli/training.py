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
import json
import math
import re
import signal
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bnn_cli import data as datamod
from bnn_cli import distribute, precision
from bnn_cli._keras import keras, tf
from bnn_cli.errors import UserError, error_text
from bnn_cli.runs import (
    LIVE_STATUSES,
    Checkpoint,
    RunDir,
    atomic_save,
    atomic_write_json,
    atomic_write_text,
    read_json,
)
from bnn_cli.spec.builder import build_optimizer
from bnn_cli.spec.checks import CheckedConfig, check
from bnn_cli.spec.schema import Config, TrainingConfig
from bnn_cli.spec.stages import CheckedStage

EXIT_OK, EXIT_FAILED, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 130, 143


@dataclass
class TrainResult:
    run_dir: Path
    status: str
    exit_code: int
    history: list[dict[str, Any]]


# ---------------------------------------------------------------------------------------
# The learning rate, for the logs
# ---------------------------------------------------------------------------------------


def current_lr(optimizer: Any) -> float | None:
    optimizer = precision.inner(optimizer)  # (a loss-scale wrapper's)
    opt = getattr(optimizer, "default_optimizer", None) or optimizer
    lr = getattr(opt, "learning_rate", None) or getattr(opt, "lr", None)
    if lr is None:
        return None
    if isinstance(lr, keras.optimizers.schedules.LearningRateSchedule):
        lr = lr(opt.iterations)
    with contextlib.suppress(Exception):
        return float(keras.backend.get_value(lr))
    return None


# ---------------------------------------------------------------------------------------
# Callbacks used inside one epoch
# ---------------------------------------------------------------------------------------


class _Guard(keras.callbacks.Callback):
    """Stops at the end of the current step on a signal or a non-finite loss.

    Keras hands batch hooks the step's results as tensors (``_supports_tf_logs``), so
    the signal check, a Python flag, costs nothing. Reading the loss makes the host
    wait for the step and copy it out, so it is read only every ``check_every`` calls
    (each runs ``runtime.steps_per_execution`` steps) and at the end of the epoch. The
    logged loss is the epoch's running mean, which stays non-finite once one step's
    was: no bad step goes unseen, the run stops soon after, and the epoch is never saved.
    """

    _supports_tf_logs = True

    def __init__(self, check_every: int = 64) -> None:
        super().__init__()
        self.check_every, self._calls = check_every, 0
        self.signal: int | None = None
        self.bad_loss: float | None = None
        self.bad_step: int | None = None

    def on_train_batch_end(self, batch, logs=None):
        if self.signal is not None:
            self.model.stop_training = True
        self._calls += 1  # (one call per `steps_per_execution` steps)
        if self._calls % self.check_every == 0:
            self._check_loss(batch, logs)

    def on_epoch_end(self, epoch, logs=None):
        self._check_loss(None, logs)

    def _check_loss(self, batch: int | None, logs) -> None:
        loss = (logs or {}).get("loss")
        if self.bad_loss is not None or loss is None:
            return
        value = float(loss)  # (a tensor: waits for the step)
        if not math.isfinite(value):
            self.bad_loss, self.bad_step = value, batch
            self.model.stop_training = True


class _Progress(keras.callbacks.Callback):
    """A progress bar per epoch on a terminal, then one line with the epoch's metrics.

    Not on a terminal (a log file, CI) there is no bar, and no batch hook at all, so
    Keras runs the steps back to back. On one, the bar is redrawn at most every
    ``interval`` seconds, and only then are the step's tensors read.
    """

    _supports_tf_logs = True

    def __init__(self, epochs: int, steps: int | None, stream=None, interval: float = 0.2):
        super().__init__()
        # sys.stderr as of now, not as of import: it may have been replaced since
        # (a caller capturing output), and the old stream may be closed.
        self.epochs, self.steps, self.stream = epochs, steps, stream or sys.stderr
        self.interval = interval
        self.bar: keras.utils.Progbar | None = None
        self._shown = 0.0

    def _implements_train_batch_hooks(self) -> bool:
        return self.stream.isatty()

    def on_epoch_begin(self, epoch, logs=None):
        self.stream.write(f"epoch {epoch + 1}/{self.epochs}\n")
        if self.stream.isatty():
            self.bar = keras.utils.Progbar(self.steps, verbose=1, stateful_metrics=None)

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        if self.bar is None or now - self._shown < self.interval:
            return
        self._shown = now
        self.bar.update(batch + 1, [(k, float(v)) for k, v in (logs or {}).items()])


def _format_row(row: dict[str, Any]) -> str:
    parts = []
    for key, value in row.items():
        if key == "epoch":
            continue
        parts.append(f"{key} {value:.4g}" if isinstance(value, float) else f"{key} {value}")
    return "  " + "  ".join(parts)


# ---------------------------------------------------------------------------------------
# Signals
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _signals_to(guard: _Guard) -> Iterator[None]:
    """SIGINT/SIGTERM set a flag; the loop stops cleanly at the end of the step."""

    def handler(signum, frame):
        if guard.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        guard.signal = signum
        sys.stderr.write(f"\n{signal.Signals(signum).name}: finishing the current step and "
                         "saving a checkpoint (send again to stop at once)\n")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


# ---------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------


@dataclass
class LoopState:
    """What the loop needs to continue exactly where it stopped (saved in checkpoints)."""

    epoch: int = 0  # completed epochs
    history: list[dict[str, Any]] | None = None
    best_value: float | None = None
    best_epoch: int | None = None
    stop_best: float | None = None  # best value of early stopping's metric
    wait: int = 0  # epochs without improvement, for early stopping
    wall_time: float = 0.0
    stage: int = 0  # of a multi-stage config: the stage being trained, which
    stage_start: int = 0  # began after this many epochs (best and wait are its own)

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "history": self.history or [],
                "best_value": self.best_value, "best_epoch": self.best_epoch,
                "stop_best": self.stop_best, "wait": self.wait, "wall_time": self.wall_time,
                "stage": self.stage, "stage_start": self.stage_start}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        return cls(epoch=int(d["epoch"]), history=list(d.get("history") or []),
                   best_value=d.get("best_value"), best_epoch=d.get("best_epoch"),
                   stop_best=d.get("stop_best", d.get("best_value")),
                   wait=int(d.get("wait", 0)), wall_time=float(d.get("wall_time", 0.0)),
                   stage=int(d.get("stage", 0)), stage_start=int(d.get("stage_start", 0)))

    def next_stage(self) -> None:
        """Start the next stage: its epochs count from here, its best is its own."""
        self.stage, self.stage_start = self.stage + 1, self.epoch
        self.best_value = self.best_epoch = self.stop_best = None
        self.wait = 0


def monitor_mode(training: TrainingConfig, monitor: str) -> str:
    """Whether ``monitor`` improves downwards ("min") or upwards ("max")."""
    if training.monitor_mode != "auto" and monitor == training.monitor:
        return training.monitor_mode
    return "min" if "loss" in monitor or "error" in monitor else "max"


def _count_patience(training: TrainingConfig, state: LoopState, row: dict[str, Any]) -> None:
    """Early stopping's count of epochs without an improvement of its own metric (by
    more than ``min_delta``), which may differ from the metric that picks the best."""
    stop = training.early_stopping
    name = stop.monitor or training.monitor
    if _improved(row[name], state.stop_best, monitor_mode(training, name), stop.min_delta):
        state.stop_best, state.wait = row[name], 0
    else:
        state.wait += 1


def _improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


@dataclass
class Job:
    """Everything one training run works with."""

    checked: CheckedConfig
    run: RunDir
    model: keras.Model
    checkpoint: tf.train.Checkpoint
    trainer: keras.Model | None = None  # what `fit` trains, if not the model (distillation)
    stage: CheckedStage | None = None  # of a multi-stage config

    @property
    def fit_model(self) -> keras.Model:
        return self.trainer or self.model

    @property
    def config(self) -> Config:
        return self.checked.config

    @property
    def data_dir(self) -> str | None:
        return self.checked.data_dir

    @property
    def steps_per_epoch(self) -> int:
        return self.checked.steps_per_epoch


def prepare(checked: CheckedConfig, run: RunDir, stage: CheckedStage | None = None,
            teacher: keras.Model | None = None, *, for_training: bool = True) -> Job:
    """Build the model and the optimizer of a checked config (new run or resume); a
    stage that distills trains a :class:`~bnn_cli.distillation.Distiller` of the model
    and ``teacher``. Not ``for_training`` (evaluation, export), the model is float32
    whatever ``runtime.mixed_precision`` says: the weights are float32 either way."""
    training = checked.spec.training
    if training.seed is not None:
        keras.utils.set_random_seed(training.seed)
    if training.deterministic:
        tf.config.experimental.enable_op_determinism()
    from bnn_cli.metrics import metrics_scope

    # Everything with variables (model, optimizer, metrics, the checkpoint) is created
    # under the strategy's scope (a no-op scope without one), the model in the config's
    # precision (runtime.mixed_precision).
    policy = checked.spec.runtime.mixed_precision if for_training else None
    with distribute.strategy().scope():
        # training.flip_ratio: every kernel quantizer logs the share of weights that flipped.
        with metrics_scope(["flip_ratio"] if training.flip_ratio else []):
            model = precision.build_model(checked, policy)
        optimizer = build_optimizer(training, checked.steps_per_epoch)
        runtime = checked.spec.runtime
        engine = {"jit_compile": runtime.jit_compile,
                  "steps_per_execution": runtime.steps_per_execution}
        model.compile(optimizer=optimizer, loss=training.loss,
                      metrics=list(training.metrics), **engine)
        trainer = None
        if stage is not None and stage.distill is not None:
            from bnn_cli.distillation import Distiller

            with precision.policy(policy):  # (its loss scaling follows the model's)
                trainer = Distiller(model, teacher, stage.distill)
            trainer.compile(optimizer=optimizer, loss=training.loss,
                            metrics=list(training.metrics), **engine)
        # Create the optimizer's slots now, so a checkpoint restores into them.
        if hasattr(optimizer, "build"):
            optimizer.build(model.trainable_variables)
        # What `fit` trains with: under mixed_float16, compile's loss-scale wrapper of
        # `optimizer`, whose loss scale is state to resume too.
        checkpoint = tf.train.Checkpoint(model=model,
                                         optimizer=(trainer or model).optimizer)
    return Job(checked, run, model, checkpoint, trainer, stage)


def check_training_step(job: Job) -> None:
    """Trace one training step (without running it) before a run directory is written.

    Some config mistakes surface only when Keras traces the step: a layer argument of
    the wrong type (``momentum: {}``), a loss that does not fit the labels
    (``categorical_crossentropy`` without ``data.one_hot``). Found here they are config
    errors, not a run directory whose first epoch crashed. ``fit`` reuses the trace.
    """
    spec = job.config.spec
    train = datamod.load_split(spec.data, spec.data.train_split, training=True,
                               batch_size=spec.training.batch_size,
                               seed=datamod.epoch_seed(spec.training.seed, 0),
                               data_dir=job.data_dir)
    try:
        job.fit_model.make_train_function().get_concrete_function(
            tf.data.IteratorSpec(train.element_spec))
    except (TypeError, ValueError, AttributeError, NotImplementedError,
            tf.errors.OpError) as exc:
        layer = re.search(r"calling layer ['\"]([^'\"]+)['\"]", str(exc))
        where = f" (in layer {layer.group(1)!r})" if layer else ""
        raise UserError(f"{job.config.path}: the model cannot be trained with this config"
                        f"{where}: {error_text(exc)}. Check the layer arguments, and "
                        "training.loss and training.metrics against the labels "
                        "(data.one_hot)") from None


def _stage_data(job: Job, state: LoopState, end: int) -> tuple[tf.data.Dataset, Any]:
    """The stage's remaining epochs of training data (one dataset) and the validation
    split; each epoch's batches depend only on the seed and the epoch's number."""
    spec = job.config.spec
    training = spec.training
    train = datamod.training_epochs(spec.data, first=state.epoch, end=end,
                                    steps=job.steps_per_epoch,
                                    batch_size=training.batch_size, seed=training.seed,
                                    data_dir=job.data_dir)
    val = None
    if spec.data.validation_split:
        val = datamod.load_split(spec.data, spec.data.validation_split, training=False,
                                 batch_size=training.batch_size, seed=None,
                                 data_dir=job.data_dir)
    return train, val


def _save_checkpoint(job: Job, state: LoopState, improved: bool) -> None:
    run = job.run
    with run.new_checkpoint(state.epoch) as folder:
        try:
            job.checkpoint.write(str(folder / "ckpt"))
        except tf.errors.OpError as exc:  # TF's I/O errors (e.g. a full disk) aren't OSError
            raise UserError(f"cannot write a checkpoint in {run.checkpoints}: {exc.message}. "
                            "Free space or choose another output folder with --output; the "
                            "previous checkpoint is kept and the run can be resumed") from None
        # saved_at tells a resume which TensorBoard events came after this checkpoint;
        # unsorted, the history rows keep their metrics' order.
        atomic_write_json(folder / "state.json", {**state.as_dict(), "saved_at": time.time()},
                          sort_keys=False)
    run.point("last", state.epoch)
    if improved:
        run.point("best", state.epoch)
    run.prune()
    run.write_metrics(state.history or [])


def _plot_curves(job: Job, state: LoopState) -> None:
    """curves.png beside the metrics; a picture is a convenience, never a reason to fail."""
    if not state.history:
        return
    from bnn_cli.plots import plot_history

    try:
        training = job.config.spec.training
        plot_history(state.history, job.run.file("curves.png"), title=job.config.name,
                     monitor=training.monitor, mode=monitor_mode(training, training.monitor))
    except Exception as exc:  # noqa: BLE001 - plotting must not end a training run
        sys.stderr.write(f"warning: could not draw curves.png: {exc}\n")


def run_loop(job: Job, state: LoopState, stages: list[CheckedStage] | None = None) -> TrainResult:
    """Train from ``state`` to the end: the configured epochs (or an early stop) of each
    stage in turn, each starting from the weights the one before selected; then finish."""
    stages = stages or []
    while True:
        # (planned epochs: the stages still to come may stop early)
        total = state.stage_start + sum(s.checked.spec.training.epochs
                                        for s in stages[state.stage:]) if stages else None
        ended = _train_stage(job, state, total)
        if ended is not None:  # interrupted or failed
            return ended
        if state.stage + 1 >= len(stages):
            return _finish(job, state)
        job = _next_stage(job, state, stages)


def _train_stage(job: Job, state: LoopState, total: int | None = None) -> TrainResult | None:
    """The epochs of ``job``'s stage (its config's epochs) from ``state``, in one
    ``fit``; a result if the run stopped before they were done. ``total``: the run's
    planned epochs."""
    training = job.config.spec.training
    total = total or training.epochs
    guard = _Guard()
    tensorboard = keras.callbacks.TensorBoard(str(job.run.file("tensorboard")),
                                              write_graph=False, profile_batch=0)
    epochs = _Epochs(job, state, guard)
    callbacks = [guard, _Progress(total, job.steps_per_epoch),
                 tensorboard, epochs]  # (the guard first, the bookkeeping last)
    state.history = state.history or []
    job.run.write_status(status="running", epochs=total, **epochs.stage)
    with _signals_to(guard):
        if not _training_done(training, state):
            end = state.stage_start + training.epochs
            train, val = _stage_data(job, state, end)
            try:
                job.fit_model.fit(train, validation_data=val, initial_epoch=state.epoch,
                                  epochs=end, steps_per_epoch=job.steps_per_epoch,
                                  verbose=0, callbacks=callbacks)
            except Exception as exc:
                if epochs.recording:  # (the bookkeeping's own errors, as they are)
                    raise
                raise _crashed(job, state, exc) from None
    if guard.bad_loss is not None:
        return _fail_nan(job, state, guard)
    if guard.signal is not None:
        return _interrupted(job, state, guard)
    return None


def _has_random_layers(model: keras.Model) -> bool:
    """Whether a layer draws random numbers while training (Keras's random layers,
    Dropout and the like, hold a ``_random_generator``). Only then is the seed set again
    before each epoch: that resets TensorFlow's random kernels (so a resumed epoch draws
    what the uninterrupted one did) and costs about 150 ms an epoch."""
    return any(hasattr(layer, "_random_generator") for layer in model.submodules)


class _Epochs(keras.callbacks.Callback):
    """The loop's work around each epoch, inside the stage's one ``fit``: before it,
    the layers' seed; after it (validation included), its history row, checkpoint,
    line and status, and early stopping. An epoch cut short by a signal or a non-finite
    loss is not recorded: the last complete checkpoint stays."""

    def __init__(self, job: Job, state: LoopState, guard: _Guard) -> None:
        super().__init__()
        self.job, self.state, self.guard = job, state, guard
        self.stage = {"stage": job.stage.name} if job.stage else {}
        self.started = time.perf_counter() - state.wall_time
        self._began = 0.0
        self.recording = False  # (while an epoch is being kept)
        # (None: no seed, or no layer that draws random numbers)
        seed = job.config.spec.training.seed
        self.seed = seed if _has_random_layers(job.fit_model) else None

    def on_epoch_begin(self, epoch, logs=None):
        if self.seed is not None:  # layers' own randomness (dropout) per (seed, epoch)
            keras.utils.set_random_seed(datamod.epoch_seed(self.seed, epoch))
        self._began = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        if self.guard.bad_loss is not None or self.guard.signal is not None:
            return
        row = {"epoch": epoch + 1, **self.stage,
               **{k: float(v) for k, v in (logs or {}).items()},
               "learning_rate": current_lr(self.job.model.optimizer),
               "seconds": round(time.perf_counter() - self._began, 3)}
        self.recording = True
        if self._record(row):
            self.model.stop_training = True
        self.recording = False

    def _record(self, row: dict[str, Any]) -> bool:
        """Keep a finished epoch (checkpoint first, then pointers, metrics, status);
        whether early stopping ends the stage here."""
        job, state = self.job, self.state
        training = job.config.spec.training
        monitor, stop = training.monitor, training.early_stopping
        state.epoch += 1
        state.history.append(row)
        value = row[monitor]  # (checks made sure that it is logged)
        improved = _improved(value, state.best_value, monitor_mode(training, monitor))
        if improved:
            state.best_value, state.best_epoch = value, state.epoch
        if stop:
            _count_patience(training, state, row)
        state.wall_time = time.perf_counter() - self.started
        _save_checkpoint(job, state, improved)
        sys.stderr.write(_format_row(row) + ("  (best)" if improved else "") + "\n")
        job.run.write_status(status="running", epochs_done=state.epoch,
                             best={monitor: state.best_value, "epoch": state.best_epoch},
                             final=row, wall_time=round(state.wall_time, 2), **self.stage)
        if stop and state.wait > stop.patience:
            sys.stderr.write(f"early stopping: {stop.monitor or monitor} has not "
                             f"improved for {state.wait} epochs\n")
            return True
        return False


# ---------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------


def stage_pointer(stage: CheckedStage) -> str:
    """The checkpoint pointer that keeps what a finished stage selected."""
    return f"stage-{stage.name}"


def stage_job(run: RunDir, stage: CheckedStage, stages: list[CheckedStage], *,
              teacher_weights: bool = True) -> Job:
    """The job of one stage; a distilling stage's teacher is built from its config and
    given the weights its stage selected (or its run directory's best checkpoint)."""
    teacher = None
    if stage.distill is not None:
        with distribute.strategy().scope():
            teacher = precision.build_model(stage.teacher_checked,
                                            stage.checked.spec.runtime.mixed_precision)
        if stage.teacher_run is not None:
            _read_weights(teacher, stage.teacher_run.load_checkpoint("best"))
        elif teacher_weights:
            _read_weights(teacher, _selected(run, stages[stage.teacher_stage]))
    return prepare(stage.checked, run, stage, teacher)


def _selected(run: RunDir, stage: CheckedStage) -> Checkpoint:
    pointer = run.checkpoints / f"{stage_pointer(stage)}.json"
    if not pointer.is_file():
        raise UserError(f"{run.path}: stage {stage.name!r} has no selected checkpoint "
                        f"({pointer} is missing), so the stages after it cannot start")
    return run.load_checkpoint(stage_pointer(stage))


def _read_weights(model: keras.Model, checkpoint: Checkpoint) -> None:
    tf.train.Checkpoint(model=model).read(checkpoint.prefix).expect_partial()


def _next_stage(job: Job, state: LoopState, stages: list[CheckedStage]) -> Job:
    """Keep what the finished stage selected, then start the next from its weights."""
    done = stages[state.stage]
    job.run.point(stage_pointer(done), state.best_epoch or state.epoch)
    selected = _selected(job.run, done)
    restore(job, selected, partial=True)
    state.next_stage()
    new = stage_job(job.run, stages[state.stage], stages)
    carried, fresh = carry_weights(job.model, new.model)
    sys.stderr.write(f"stage {new.stage.name!r} starts from {selected.path.name}, what "
                     f"stage {done.name!r} selected ({carried} layers' weights"
                     + (f"; new: {', '.join(fresh)}" if fresh else "") + ")\n")
    return new


def carry_weights(source: keras.Model, target: keras.Model) -> tuple[int, list[str]]:
    """Copy each layer's weights to the layer of the same name and weight shapes; the
    number copied, and the names of the target's layers with weights that got none."""
    by_name = {layer.name: layer for layer in source.layers}
    carried, fresh = 0, []
    for layer in target.layers:
        if not layer.weights:
            continue
        old = by_name.get(layer.name)
        shapes = [tuple(w.shape) for w in layer.weights]
        if old is not None and [tuple(w.shape) for w in old.weights] == shapes:
            layer.set_weights(old.get_weights())
            carried += 1
        else:
            fresh.append(layer.name)
    return carried, fresh


def _finish(job: Job, state: LoopState) -> TrainResult:
    """Save the final model, evaluate the checkpoint chosen on validation on the test
    split, and only then mark the run completed (a kill before that leaves it resumable)."""
    run = job.run
    atomic_save(run.file("model.keras"), job.model.save)
    _plot_curves(job, state)
    final = state.history[-1] if state.history else {}
    results = {"epochs_done": state.epoch, "final": final,
               "best": {job.config.spec.training.monitor: state.best_value,
                        "epoch": state.best_epoch},
               "wall_time": round(state.wall_time, 2)}
    try:
        test = _test_evaluation(job)
    except Exception as exc:  # noqa: BLE001 - the trained run must not be lost
        return _test_failed(job, state, results, exc)
    if "error" in run.read_status_safely():  # (left by an earlier failure that resume fixed)
        results["error"] = None
    run.write_status(status="completed", **results, test=test)
    sys.stderr.write(_test_line(test) + "\n")
    sys.stderr.write(f"done: {run.path}\n")
    return TrainResult(run.path, "completed", EXIT_OK, state.history or [])


def _test_evaluation(job: Job) -> dict[str, Any]:
    """run.json's ``test`` entry: the checkpoint chosen on validation (``best``; ``last``
    without one) evaluated on ``data.test_split``, and how it was chosen."""
    from bnn_cli.evaluation import evaluate_checkpoint, selection

    run, spec = job.run, job.config.spec
    pointer = "best" if (run.checkpoints / "best.json").is_file() else "last"
    checkpoint = run.load_checkpoint(pointer)
    selected_on = selection(job.config) if pointer == "best" else None
    report = evaluate_checkpoint(job, checkpoint, spec.data.test_split, str(run.path),
                                 pointer, selected_on)
    test = {"split": report.split, "checkpoint": report.checkpoint, "epoch": report.epoch,
            "pointer": pointer, "selected_on": selected_on, "metrics": report.metrics}
    if report.warning:
        test["warning"] = report.warning
        sys.stderr.write(f"warning: {report.warning}\n")
    return test


def _test_line(test: dict[str, Any]) -> str:
    """``test on split 'test': accuracy 0.9333  loss 0.2101 (best checkpoint ...)``."""
    from bnn_cli.evaluation import describe_selection

    metrics = "  ".join(f"{k} {v:.4f}" for k, v in test["metrics"].items())
    how = describe_selection(test["pointer"], test["checkpoint"], test["selected_on"])
    return f"test on split {test['split']!r}: {metrics} ({how})"


def _test_failed(job: Job, state: LoopState, results: dict[str, Any],
                 exc: Exception) -> TrainResult:
    """Training finished but the test evaluation did not: keep everything, mark the run
    failed with the reason; ``--resume`` retries the test evaluation (no more training)."""
    run, split = job.run, job.config.spec.data.test_split
    reason = error_text(exc)
    why = f"the test evaluation on split {split!r} failed: {type(exc).__name__}: {reason}"
    with contextlib.suppress(UserError):  # (the disk may be what failed)
        run.write_status(status="failed", **results, error=why,
                         test={"split": split, "error": why})
    message = (f"training finished but {why}. The run is marked failed; its checkpoints and "
               f"model.keras are kept, and `bnn train --resume {run.path}` retries the test "
               "evaluation without training again")
    if isinstance(exc, UserError):
        raise UserError(message) from None
    sys.stderr.write(f"error: {message}\n")
    return TrainResult(run.path, "failed", EXIT_FAILED, state.history or [])


def _interrupted(job: Job, state: LoopState, guard: _Guard) -> TrainResult:
    # The epoch was cut short: its partial progress is dropped, the last complete
    # checkpoint stays, and the resumed run repeats this epoch from its start.
    code = EXIT_SIGINT if guard.signal == signal.SIGINT else EXIT_SIGTERM
    _plot_curves(job, state)
    job.run.write_status(status="interrupted", epochs_done=state.epoch)
    sys.stderr.write(f"interrupted after {state.epoch} complete epoch(s); resume with:\n"
                     f"  bnn train {job.run.path / 'config.yaml'} --resume {job.run.path}\n")
    return TrainResult(job.run.path, "interrupted", code, state.history or [])


def _crashed(job: Job, state: LoopState, exc: Exception) -> Exception:
    """Mark the run failed (run.json must not say "running" after a crash) and return
    the exception to raise: an op that refused a value (InvalidArgumentError) is almost
    always a config value only the running step could check, so a UserError."""
    reason = error_text(exc)
    with contextlib.suppress(UserError):  # (the disk may be what failed)
        job.run.write_status(status="failed", epochs_done=state.epoch,
                             error=f"epoch {state.epoch + 1}: {type(exc).__name__}: {reason}")
    if isinstance(exc, tf.errors.InvalidArgumentError):
        return UserError(f"{job.config.path}: training failed in epoch {state.epoch + 1}: "
                         f"{reason}. Check the layer arguments in the config; the run is "
                         "marked failed and its last good checkpoint is kept")
    return exc


def _fail_nan(job: Job, state: LoopState, guard: _Guard) -> TrainResult:
    step = "its end" if guard.bad_step is None else f"step {guard.bad_step + 1}"
    where = f"epoch {state.epoch + 1} (seen by {step})"
    job.run.write_status(status="failed", epochs_done=state.epoch,
                         error=f"non-finite loss {guard.bad_loss} in {where}")
    sys.stderr.write(f"error: the loss became {guard.bad_loss} in {where}; the run is "
                     "marked failed and its last good checkpoint is kept. Try a lower "
                     "learning rate.\n")
    return TrainResult(job.run.path, "failed", EXIT_FAILED, state.history or [])


# ---------------------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------------------


def _write_run_files(run: RunDir, config: Config, overrides: list[str], model: keras.Model,
                     plugins: list[str]) -> None:
    from bnn_cli.models import summary, summary_data
    from bnn_cli.spec.source import flattened_text

    original = flattened_text(config.path) if config.path else ""
    atomic_write_text(run.file("config.yaml"), original)
    resolved = config.spec.model_dump(mode="json")
    resolved["name"] = config.name
    atomic_write_text(run.file("config.resolved.yaml"),
                      yaml.safe_dump(resolved, sort_keys=False))
    atomic_write_json(run.file("overrides.json"), {"overrides": overrides, "plugins": plugins})
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
            run.write_status(status="starting", name=config.name,
                             config_path=str(Path(config_path).resolve()),
                             started=time.strftime("%Y-%m-%dT%H:%M:%S"),
                             runtime=distribute.describe(config.spec.runtime))
            _write_run_files(run, config, overrides, job.model, plugins)
            from bnn_cli.experiments.hparams import write_hparams
            write_hparams(run, config, overrides)  # once, for TensorBoard's HParams

        run = job.run = RunDir.create(output_root, config.name, fill)  # (locked)
        with _ending_recorded(run):
            if distribute.is_chief():
                sys.stderr.write(f"run directory: {run.path}\n")
            return run_loop(job, LoopState(), checked.stages)


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


def load_run_config(run: RunDir, data_dir: str | None = None, *,
                    trust_plugins: bool = False, start_runtime: bool = False) -> CheckedConfig:
    """The config a run was started with (with its overrides and plugins), checked.

    A run directory may come from elsewhere and importing a plugin runs its code, so
    the plugins it names (config.yaml's, overrides.json's) are imported only with
    ``trust_plugins``; without it, naming any is a UserError that names them."""
    from bnn_cli.vetting import refuse_run_plugins

    extras = read_json(run.file("overrides.json")) if run.file("overrides.json").is_file() \
        else {}
    if not isinstance(extras, dict):
        raise UserError(f"{run.file('overrides.json')} is corrupted: not a JSON object")
    source = run.read_status_safely().get("config_path")
    overrides, plugins = list(extras.get("overrides", [])), extras.get("plugins", [])
    base = Path(source).parent if source else None  # plugins: relative to the original config
    if not trust_plugins:
        refuse_run_plugins(run, overrides, plugins, base)
    return check(run.file("config.yaml"), overrides, plugins=plugins, data_dir=data_dir,
                 plugin_base=base, start_runtime=start_runtime)


def restore(job: Job, checkpoint: Checkpoint, *, partial: bool = False) -> None:
    """Load a checkpoint's weights (and optimizer) into the job's model."""
    try:
        status = job.checkpoint.read(checkpoint.prefix)
        if partial:  # evaluation needs the weights only
            status.expect_partial()
        else:
            status.assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as exc:
        # E.g. config.yaml was edited after training: the layers no longer match.
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
        raise UserError(f"checkpoint {checkpoint.path} does not fit the model of the run's "
                        f"config ({type(exc).__name__}: {first}); was config.yaml edited "
                        "after training?") from None


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
        return _already_completed(run)
    # Checking writes nothing, so a config (or plugin) refused here leaves the run as it
    # was: interrupted, resumable once the problem is fixed.
    checked = load_run_config(run, data_dir, trust_plugins=trust_plugins,
                              start_runtime=True)
    if not distribute.is_chief():
        return _resume_worker(run, checked)
    run.lock()
    with _ending_recorded(run):
        try:
            status = run.read_status()
        except UserError as exc:  # run.json is rewritten below; the checkpoints hold the state
            sys.stderr.write(f"warning: {exc}; it will be rewritten\n")
            status = {}
        if status.get("status") == "completed":  # (completed while we took the lock)
            return _already_completed(run)
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
            for name in ("config.yaml", "overrides.json", "run.json"):
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


def _already_completed(run: RunDir) -> TrainResult:
    # Not an error: a kill can land after the run recorded its completion (while the
    # process exits), and `--resume` after any kill must end with a finished run.
    sys.stderr.write(f"{run.path} already completed; nothing to resume\n")
    history = []
    with contextlib.suppress(OSError, ValueError):
        history = [json.loads(x) for x in run.file("metrics.jsonl").read_text().splitlines()]
    return TrainResult(run.path, "completed", EXIT_OK, history)


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
    run.write_status(status="running", epochs_done=state.epoch)
    sys.stderr.write(f"resuming {run.path} after epoch {state.epoch}"
                     + (f" (stage {job.stage.name!r})" if job.stage else "") + "\n")
    # (A stage whose epochs are done goes on to the next, or, killed while finishing, to
    # finishing.)
    return run_loop(job, state, checked.stages)


@contextlib.contextmanager
def _ending_recorded(run: RunDir) -> Iterator[None]:
    """While this process works in ``run`` (holding its lock): an exception that ends
    the run leaves its status saying so, never ``running``; the lock is released at the
    end, however it comes."""
    try:
        yield
    except KeyboardInterrupt:  # a second signal (or one before the handlers were set)
        _record_end(run, "interrupted", "stopped at once, without saving a checkpoint")
        raise
    except Exception as exc:
        reason = str(exc) if isinstance(exc, UserError) else \
            f"{type(exc).__name__}: {error_text(exc)}"
        _record_end(run, "failed", reason)
        raise
    finally:
        run.unlock()


def _record_end(run: RunDir, status: str, error: str) -> None:
    """Write how the run ended into run.json, unless the loop already did (failed,
    interrupted); if run.json cannot be written (a full disk), into the lock file, which
    the next reader of the run consults (:meth:`RunDir.read_status`)."""
    try:
        current = run.read_status_file().get("status")
    except (UserError, AttributeError):  # unreadable or not an object: rewrite it
        current = "running"
    if current not in LIVE_STATUSES:
        return
    try:
        run.write_status(status=status, error=error)
    except UserError:
        run.record_end(status, error)


def _training_done(training: TrainingConfig, state: LoopState) -> bool:
    """Whether the loop would train no further epoch of the stage from ``state`` (all
    its epochs done, or early stopping already triggered)."""
    stop = training.early_stopping
    return (state.epoch >= state.stage_start + training.epochs
            or bool(stop and state.wait > stop.patience))


def _warn_if_config_differs(run: RunDir, given: Path) -> None:
    """CONFIG given with --resume is not read: say so if it differs from the stored one."""
    stored = run.file("config.yaml")
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
