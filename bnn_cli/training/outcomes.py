"""How a run ends, each way written into its run directory before the process exits:
completed (final model, curves, the test evaluation of the checkpoint chosen on
validation), interrupted, failed (a non-finite loss, a crash, a test evaluation that
failed), or found already completed by a resume.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bnn_cli._keras import tf
from bnn_cli.assemble.job import Job
from bnn_cli.config.monitor import monitor_mode, selection
from bnn_cli.data import pipeline as datamod
from bnn_cli.errors import UserError, error_text
from bnn_cli.plots import plot_history
from bnn_cli.rundir.run import RunDir, atomic_save
from bnn_cli.training.callbacks import Guard
from bnn_cli.training.evaluation import describe_scoring, describe_selection, evaluate_checkpoint
from bnn_cli.training.state import LoopState, target_record

EXIT_OK, EXIT_FAILED, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 130, 143


@dataclass
class TrainResult:
    run_dir: Path
    status: str
    exit_code: int
    history: list[dict[str, Any]]


def _plot_curves(job: Job, state: LoopState) -> None:
    """curves.png beside the metrics; a picture is a convenience, never a reason to fail."""
    if not state.history:
        return

    try:
        training = job.config.spec.training
        plot_history(state.history, job.run.file("curves.png"), title=job.config.name,
                     monitor=training.monitor, mode=monitor_mode(training, training.monitor))
    except Exception as exc:  # noqa: BLE001 - plotting must not end a training run
        sys.stderr.write(f"warning: could not draw curves.png: {exc}\n")


def finish(job: Job, state: LoopState) -> TrainResult:
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
    training = job.config.spec.training
    if training.target is not None and state.reached is None:  # (reached: recorded then)
        results["target"] = target_record(training, state)
    try:
        test = _test_evaluation(job)
    except Exception as exc:  # noqa: BLE001 - the trained run must not be lost
        return _test_failed(job, state, results, exc)
    results["error"] = None  # (an earlier failure that this resume fixed)
    run.write_record(status="completed", **results, test=test)
    sys.stderr.write(_test_line(test) + "\n")
    sys.stderr.write(f"done: {run.path}\n")
    return TrainResult(run.path, "completed", EXIT_OK, state.history or [])


def _test_evaluation(job: Job) -> dict[str, Any]:
    """run.json's ``test`` entry: the checkpoint chosen on validation (``best``; ``last``
    without one) evaluated on ``data.test_split``, and how it was chosen."""

    run, spec = job.run, job.config.spec
    pointer = "best" if run.pointed("best") is not None else "last"
    checkpoint = run.load_checkpoint(pointer)
    selected_on = selection(job.config) if pointer == "best" else None
    report = evaluate_checkpoint(job, checkpoint, spec.data.test_split, str(run.path),
                                 pointer, selected_on)
    test = {k: v for k, v in report.as_dict().items() if k != "target"}
    if report.warning:
        sys.stderr.write(f"warning: {report.warning}\n")
    return test


def _test_line(test: dict[str, Any]) -> str:
    """``test on split 'test': accuracy 0.9333  loss 0.2101 (best checkpoint ...)``."""

    metrics = "  ".join(f"{k} {v:.4f}" for k, v in test["metrics"].items())
    how = describe_selection(test["pointer"], test["checkpoint"], test["selected_on"])
    if test.get("test_time_augmentation"):
        how += "; " + describe_scoring(test["test_time_augmentation"])
    return f"test on split {test['split']!r}: {metrics} ({how})"


def _test_failed(job: Job, state: LoopState, results: dict[str, Any],
                 exc: Exception) -> TrainResult:
    """Training finished but the test evaluation did not: keep everything, mark the run
    failed with the reason; ``--resume`` retries the test evaluation (no more training)."""
    run, split = job.run, job.config.spec.data.test_split
    reason = error_text(exc)
    why = f"the test evaluation on split {split!r} failed: {type(exc).__name__}: {reason}"
    with contextlib.suppress(UserError):  # (the disk may be what failed)
        run.write_record(status="failed", **results, error=why,
                         test={"split": split, "error": why})
    message = (f"training finished but {why}. The run is marked failed; its checkpoints and "
               f"model.keras are kept, and `bnn train --resume {run.path}` retries the test "
               "evaluation without training again")
    if isinstance(exc, UserError):
        raise UserError(message) from None
    sys.stderr.write(f"error: {message}\n")
    return TrainResult(run.path, "failed", EXIT_FAILED, state.history or [])


def interrupted(job: Job, state: LoopState, guard: Guard) -> TrainResult:
    # The epoch was cut short: its partial progress is dropped, the last complete
    # checkpoint stays, and the resumed run repeats this epoch from its start.
    code = EXIT_SIGINT if guard.signal == signal.SIGINT else EXIT_SIGTERM
    _plot_curves(job, state)
    job.run.write_record(status="interrupted", epochs_done=state.epoch)
    sys.stderr.write(f"interrupted after {state.epoch} complete epoch(s); resume with:\n"
                     f"  bnn train {job.run.path / 'config.yaml'} --resume {job.run.path}\n")
    return TrainResult(job.run.path, "interrupted", code, state.history or [])


def crashed(job: Job, state: LoopState, exc: Exception) -> Exception:
    """Mark the run failed (run.json must not say "running" after a crash) and return
    the exception to raise: an op that refused a value (InvalidArgumentError) is almost
    always a config value only the running step could check, so a UserError."""
    reason = error_text(exc)
    with contextlib.suppress(UserError):  # (the disk may be what failed)
        job.run.write_record(status="failed", epochs_done=state.epoch,
                             error=f"epoch {state.epoch + 1}: {type(exc).__name__}: {reason}")
    if isinstance(exc, tf.errors.InvalidArgumentError):
        where = f"{job.config.path}: training failed in epoch {state.epoch + 1}"
        kept = "the run is marked failed and its last good checkpoint is kept"
        spec = job.config.spec.data
        failure = datamod.decoding_failure(datamod.open_source(spec, job.data_dir), [
            s for s in (spec.train_split, spec.validation_split) if s], reason)
        if failure is not None:
            return UserError(f"{where}: {failure}; {kept}")
        return UserError(f"{where}: {reason}. Check the layer arguments in the config; "
                         f"{kept}")
    return exc


def fail_nan(job: Job, state: LoopState, guard: Guard) -> TrainResult:
    step = "its end" if guard.bad_step is None else f"step {guard.bad_step + 1}"
    where = f"epoch {state.epoch + 1} (seen by {step})"
    job.run.write_record(status="failed", epochs_done=state.epoch,
                         error=f"non-finite loss {guard.bad_loss} in {where}")
    sys.stderr.write(f"error: the loss became {guard.bad_loss} in {where}; the run is "
                     "marked failed and its last good checkpoint is kept. Try a lower "
                     "learning rate.\n")
    return TrainResult(job.run.path, "failed", EXIT_FAILED, state.history or [])


def already_completed(run: RunDir) -> TrainResult:
    # Not an error: a kill can land after the run recorded its completion (while the
    # process exits), and `--resume` after any kill must end with a finished run.
    sys.stderr.write(f"{run.path} already completed; nothing to resume\n")
    return TrainResult(run.path, "completed", EXIT_OK, run.read_history())


@contextlib.contextmanager
def ending_recorded(run: RunDir) -> Iterator[None]:
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
    the next reader of the run consults (:meth:`RunDir.read_record`)."""
    try:
        live = run.read_record_file().live
    except UserError:  # unreadable: rewrite it
        live = True
    if not live:
        return
    try:
        run.write_record(status=status, error=error)
    except UserError:
        run.record_end(status, error)
