"""The training loop's Keras callbacks: the guard (signals and non-finite losses), the
progress line, and the per-epoch bookkeeping (history row, checkpoint, pointers,
metrics files, status, early stopping).
"""

from __future__ import annotations

import contextlib
import math
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

from bnn_cli._keras import keras, tf
from bnn_cli.assemble import mixed_precision as precision
from bnn_cli.assemble.job import Job
from bnn_cli.config.monitor import improves, monitor_mode
from bnn_cli.data import pipeline as datamod
from bnn_cli.errors import UserError
from bnn_cli.models import summary_data
from bnn_cli.rundir.run import atomic_write_json
from bnn_cli.training.state import (
    LoopState,
    count_patience,
    reaches_target,
    target_monitor,
    target_record,
)


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


class Guard(keras.callbacks.Callback):
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


class Progress(keras.callbacks.Callback):
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


@contextlib.contextmanager
def signals_to(guard: Guard) -> Iterator[None]:
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


def _has_random_layers(model: keras.Model) -> bool:
    """Whether a layer draws random numbers while training (Keras's random layers,
    Dropout and the like, hold a ``_random_generator``). Only then is the seed set again
    before each epoch: that resets TensorFlow's random kernels (so a resumed epoch draws
    what the uninterrupted one did) and costs about 150 ms an epoch."""
    return any(hasattr(layer, "_random_generator") for layer in model.submodules)


class Epochs(keras.callbacks.Callback):
    """The loop's work around each epoch, inside the stage's one ``fit``: before it,
    the layers' seed; after it (validation included), its history row, checkpoint,
    line and status, and early stopping. An epoch cut short by a signal or a non-finite
    loss is not recorded: the last complete checkpoint stays."""

    def __init__(self, job: Job, state: LoopState, guard: Guard, *,
                 final: bool = True) -> None:
        super().__init__()
        self.job, self.state, self.guard, self.final = job, state, guard, final
        self.step_macs = training_macs(job)
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
        best = next((r for r in state.history if r["epoch"] == state.best_epoch), None)
        # (checks made sure that the monitor is logged)
        improved = improves(row, best, monitor, monitor_mode(training, monitor))
        if improved:
            state.best_value, state.best_epoch = row[monitor], state.epoch
        if stop:
            count_patience(training, state, row)
        state.wall_time = time.perf_counter() - self.started
        self._count_compute()
        reached = state.reached is None and reaches_target(training, row)
        if reached:
            state.reached = state.epoch
        _save_checkpoint(job, state, improved)
        sys.stderr.write(_format_row(row) + ("  (best)" if improved else "") + "\n")
        job.run.write_record(status="running", epochs_done=state.epoch,
                             best={monitor: state.best_value, "epoch": state.best_epoch},
                             final=row, wall_time=round(state.wall_time, 2),
                             compute={"examples": state.examples,
                                      "training_macs": dict(state.macs)}, **self.stage)
        if reached:
            return self._reached(row)
        if stop and state.wait > stop.patience:
            sys.stderr.write(f"early stopping: {stop.monitor or monitor} has not "
                             f"improved for {state.wait} epochs\n")
            return True
        return False

    def _count_compute(self) -> None:
        """Add the epoch's examples and training MACs (see :func:`training_macs`)."""
        state, job = self.state, self.job
        examples = job.steps_per_epoch * job.config.spec.training.batch_size
        state.examples += examples
        for bits, n in self.step_macs.items():
            state.macs[bits] = state.macs.get(bits, 0) + n * examples

    def _reached(self, row: dict[str, Any]) -> bool:
        """The stage reached training.target: it ends here; for the final model, the
        run records when and at what cost."""
        training, state = self.job.config.spec.training, self.state
        name = target_monitor(training)
        sign = ">=" if monitor_mode(training, name) == "max" else "<="
        sys.stderr.write(f"target reached: {name} {row[name]:.4g} {sign} "
                         f"{training.target.value:g} at epoch {state.epoch}, after "
                         f"{state.wall_time:.1f} s of training\n")
        if self.final:
            self.job.run.write_record(target=target_record(
                training, state, row, epoch=state.epoch, **self.stage,
                seconds=round(state.wall_time, 2)))
        return True


def training_macs(job: Job) -> dict[str, int]:
    """Multiply-accumulates one training example costs, by precision (bits, as string
    keys): about 3 x the model's forward MACs (forward, and the backward pass's two
    products), plus one forward pass of each teacher; from bnn's own summary (layers
    whose MACs it does not know count 0)."""
    cost: dict[str, int] = {}
    teachers = getattr(job.trainer, "teachers", None) or []
    for model, times in [(job.model, 3), *((t, 1) for t in teachers)]:
        for bits, n in (summary_data(model).macs_by_precision or {}).items():
            cost[str(bits)] = cost.get(str(bits), 0) + times * n
    return cost

