"""`bnn eval` targets, `bnn train --resume` without CONFIG, and the test-split evaluation
of the checkpoint chosen on validation (small runs on the embedded digits)."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from bnn_cli.cli import main
from bnn_cli.training import outcomes

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
TINY = ["training.epochs=2", "training.steps_per_epoch=5", "training.batch_size=32"]
# The learning rate falls every epoch (cosine), so with it as the monitor the best
# checkpoint is always epoch 1 and the last one epoch 2: they differ.
LR_MONITOR = ["training.monitor=learning_rate", "training.monitor_mode=max"]
HELD_OUT = {"split": "train[90%:]", "monitor": "val_accuracy"}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Iterator[str]:
    """A private TFDS data_dir (the digits are prepared into it), restored afterwards."""
    with pytest.MonkeyPatch.context() as patch:
        path = str(tmp_path_factory.mktemp("tfds"))
        patch.setenv("TFDS_DATA_DIR", path)
        yield path


def _train(output: Path, *extra: str) -> tuple[int, Path]:
    code = main(["train", str(QUICKSTART), *TINY, *extra, "--output", str(output)])
    (run,) = [p for p in output.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return code, run


def _status(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def _pointer(run: Path, which: str) -> str:
    return json.loads((run / "checkpoints" / f"{which}.json").read_text())["checkpoint"]


def _epochs(run: Path) -> list[int]:
    return [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]


def _eval_json(capsys, *args: str) -> dict:
    capsys.readouterr()
    assert main(["eval", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir) -> Path:
    code, run = _train(tmp_path_factory.mktemp("runs"))
    assert code == 0
    return run


@pytest.fixture(scope="module")
def lr_run(tmp_path_factory, data_dir) -> Path:
    code, run = _train(tmp_path_factory.mktemp("lr-runs"), *LR_MONITOR)
    assert code == 0
    assert (_pointer(run, "best"), _pointer(run, "last")) == ("epoch-0001", "epoch-0002")
    return run


# -- the test entry of run.json ----------------------------------------------------------


def test_completed_run_records_the_best_checkpoint_on_the_test_split(finished_run, capsys):
    status = _status(finished_run)
    test = status["test"]
    assert status["status"] == "completed"
    assert test["split"] == "test" and test["pointer"] == "best"
    assert test["checkpoint"] == _pointer(finished_run, "best")
    assert test["epoch"] == status["best"]["epoch"]
    assert test["selected_on"] == HELD_OUT
    assert "warning" not in test  # validation is held out of train, not the test split
    report = _eval_json(capsys, str(finished_run))  # the same checkpoint, model rebuilt
    assert report["split"] == "test" and report["checkpoint"] == test["checkpoint"]
    assert report["metrics"] == pytest.approx(test["metrics"], abs=1e-6)


def test_test_entry_uses_best_not_last_and_names_the_training_split(lr_run, capsys):
    test = _status(lr_run)["test"]
    assert (test["checkpoint"], test["epoch"]) == ("epoch-0001", 1)
    # A monitor without `val_` is computed on the training split.
    assert test["selected_on"] == {"split": "train[:90%]", "monitor": "learning_rate"}
    best = _eval_json(capsys, str(lr_run), "--checkpoint", "best")
    last = _eval_json(capsys, str(lr_run), "--checkpoint", "last")
    assert test["metrics"] == pytest.approx(best["metrics"], abs=1e-6)
    assert last["checkpoint"] == "epoch-0002" and last["metrics"] != best["metrics"]


def test_selection_on_the_test_split_is_flagged_as_optimistic(tmp_path, data_dir, capsys):
    code, run = _train(tmp_path, "training.epochs=1", "data.validation_split=test")
    assert code == 0
    test = _status(run)["test"]
    assert test["selected_on"] == {"split": "test", "monitor": "val_accuracy"}
    assert "selected on split 'test'" in test["warning"] and "optimistic" in test["warning"]
    assert set(test["metrics"]) == {"loss", "accuracy"}  # evaluated all the same
    err = capsys.readouterr().err
    assert "warning: the checkpoint was selected on split 'test'" in err
    assert "test on split 'test': " in err


def test_a_failed_test_evaluation_keeps_the_run_and_resume_retries_it(
        tmp_path, data_dir, capsys, monkeypatch):
    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(outcomes, "evaluate_checkpoint", boom)
    code, run = _train(tmp_path, "training.epochs=1", "training.steps_per_epoch=3")
    assert code == 1
    err = capsys.readouterr().err
    assert "disk on fire" in err and "marked failed" in err and "--resume" in err
    status = _status(run)
    assert status["status"] == "failed" and status["epochs_done"] == 1
    assert "disk on fire" in status["test"]["error"] and "metrics" not in status["test"]
    assert (run / "model.keras").is_file() and _epochs(run) == [1]
    monkeypatch.undo()
    assert main(["train", "--resume", str(run)]) == 0  # no CONFIG needed
    err = capsys.readouterr().err
    assert f"resuming {run} after epoch 1" in err and "epoch 1/1" not in err  # no training
    assert "test on split 'test': " in err and "chosen on split 'train[90%:]'" in err
    status = _status(run)
    assert status["status"] == "completed" and status.get("error") is None  # (cleared)
    assert status["test"]["selected_on"] == HELD_OUT and "accuracy" in status["test"]["metrics"]
    assert _epochs(run) == [1]


# -- bnn train --resume without CONFIG ---------------------------------------------------


def _unfinished_copy(lr_run: Path, where: Path) -> Path:
    """The two-epoch run as if killed after epoch 1 (its epoch-1 checkpoint is the best)."""
    run = where / lr_run.name
    shutil.copytree(lr_run, run)
    shutil.rmtree(run / "checkpoints" / "epoch-0002")
    (run / "checkpoints" / "last.json").write_text('{"checkpoint": "epoch-0001"}')
    (run / "model.keras").unlink()
    status = _status(run)
    del status["test"]
    (run / "run.json").write_text(json.dumps({**status, "status": "interrupted",
                                              "epochs_done": 1}))
    return run


def test_resume_without_config_finishes_an_interrupted_run(lr_run, tmp_path, capsys):
    run = _unfinished_copy(lr_run, tmp_path)
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"resuming {run} after epoch 1" in err and "epoch 2/2" in err
    assert "warning" not in err
    status = _status(run)
    assert status["status"] == "completed" and status["epochs_done"] == 2
    assert _epochs(run) == [1, 2] and _pointer(run, "last") == "epoch-0002"
    assert status["test"]["checkpoint"] == "epoch-0001" and (run / "model.keras").is_file()


def test_resume_after_early_stopping_only_finishes(tmp_path, data_dir, capsys):
    """Killed while finishing (model save, test evaluation) after early stopping: resume
    finishes the run without training the epochs early stopping skipped."""
    code, run = _train(tmp_path, "training.epochs=4", "training.steps_per_epoch=3",
                       "training.early_stopping={patience: 0, min_delta: 1000}")
    assert code == 0 and _epochs(run) == [1, 2]
    status = _status(run)
    del status["test"]
    (run / "run.json").write_text(json.dumps({**status, "status": "running"}))
    (run / "model.keras").unlink()
    capsys.readouterr()
    assert main(["train", "--resume", str(run)]) == 0
    err = capsys.readouterr().err
    assert f"resuming {run} after epoch 2" in err and "epoch 3/4" not in err
    assert _epochs(run) == [1, 2] and (run / "model.keras").is_file()
    final = _status(run)
    # (the test evaluation is of the checkpoint chosen on validation, as before the kill)
    assert final["status"] == "completed" and final["test"]["epoch"] == final["best"]["epoch"]


def test_resume_warns_only_when_the_given_config_differs(lr_run, tmp_path, capsys):
    stored = lr_run / "config.yaml"
    assert main(["train", str(QUICKSTART), "--resume", str(lr_run)]) == 0  # same bytes
    err = capsys.readouterr().err
    assert "already completed" in err and "warning" not in err
    edited = tmp_path / "edited.yaml"
    edited.write_text(QUICKSTART.read_text() + "# tuned\n")
    assert main(["train", str(edited), "--resume", str(lr_run)]) == 0
    err = capsys.readouterr().err
    assert f"warning: {edited} differs from the run's stored {stored}" in err
    assert f"uses the stored config and ignores {edited}" in err


def test_train_needs_a_config_or_resume(capsys):
    assert main(["train"]) == 2
    err = capsys.readouterr().err
    assert "Missing argument 'CONFIG'" in err and "--resume RUN_DIR" in err
    assert "Traceback" not in err


def test_overrides_are_refused_on_resume(lr_run, capsys):
    assert main(["train", "--resume", str(lr_run), "training.epochs=5"]) == 2
    err = capsys.readouterr().err
    assert "error: overrides (training.epochs=5) do not apply with --resume" in err
    assert _status(lr_run)["epochs_done"] == 2


# -- bnn eval on a run directory and on targets that are not one -------------------------


def test_eval_names_the_split_and_monitor_that_chose_the_checkpoint(finished_run, capsys):
    best = _pointer(finished_run, "best")
    capsys.readouterr()
    assert main(["eval", str(finished_run)]) == 0
    out = capsys.readouterr().out
    assert f"best checkpoint {best}, chosen on split 'train[90%:]' by val_accuracy" in out
    report = _eval_json(capsys, str(finished_run))
    assert (report["pointer"], report["selected_on"]) == ("best", HELD_OUT)
    assert "warning" not in report
    last = _eval_json(capsys, str(finished_run), "--checkpoint", "last")
    assert (last["pointer"], last["selected_on"]) == ("last", None)
    assert main(["eval", str(finished_run), "--checkpoint", "last"]) == 0
    assert "last checkpoint epoch-0002 (the latest epoch" in capsys.readouterr().out


@pytest.mark.parametrize("split,flagged", [("train[95%:]", True), ("train[:90%]", False)])
def test_eval_flags_a_split_that_overlaps_the_selection_split(finished_run, capsys, split,
                                                               flagged):
    report = _eval_json(capsys, str(finished_run), "--split", split)
    assert ("overlaps the evaluated split" in report.get("warning", "")) is flagged


def _eval_error(capsys, *args: str) -> str:
    capsys.readouterr()
    assert main(["eval", *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_eval_of_an_empty_folder_says_what_a_target_may_be(tmp_path, capsys):
    err = _eval_error(capsys, str(tmp_path), "--config", str(QUICKSTART))
    assert f"{tmp_path} is empty" in err
    assert "a run directory" in err and "a checkpoint folder" in err and ".keras" in err


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "notes.md").write_text("hello")
    err = _eval_error(capsys, str(tmp_path))
    assert f"{tmp_path} is not a run directory (it has no run.json)" in err
    assert "pass --config" not in err


def test_eval_of_a_file_with_an_unknown_suffix_names_the_accepted_ones(tmp_path, capsys):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    err = _eval_error(capsys, str(notes), "--config", str(QUICKSTART))
    assert "does not read '.txt' files" in err and ".keras, .h5, .hdf5" in err


def test_eval_of_a_folder_of_runs_lists_them(finished_run, tmp_path, capsys):
    root = tmp_path / "runs"
    shutil.copytree(finished_run, root / finished_run.name)
    other = root / "quickstart-20260101-000000"
    other.mkdir()
    (other / "run.json").write_text('{"status": "interrupted", "epochs_done": 1, "epochs": 20}')
    (root / ".incomplete-quickstart-x").mkdir()  # a staging folder is no run
    err = _eval_error(capsys, str(root))
    assert f"{root} holds run directories" in err and "pass --config" not in err
    assert "quickstart-20260101-000000 (interrupted, 1/20 epochs)" in err
    assert f"{finished_run.name} (completed, 2/2 epochs)" in err
    assert ".incomplete" not in err
    assert f"bnn eval {root / finished_run.name}" in err  # the newest by name


def test_eval_of_a_folder_inside_a_run_that_is_no_checkpoint(finished_run, capsys):
    err = _eval_error(capsys, str(finished_run / "tensorboard"))
    assert "not a checkpoint" in err and "checkpoints/epoch-NNNN" in err
    err = _eval_error(capsys, str(finished_run / "metrics.csv"))
    assert "does not read '.csv' files" in err


def test_a_model_with_dropout_resumes_exactly(tmp_path, data_dir, monkeypatch):
    """Dropout's masks come from TensorFlow's random kernels, which the loop resets with
    the epoch's seed before each epoch (only for models with such layers): a run stopped
    after epoch 1 and resumed ends with the uninterrupted run's metrics."""
    from bnn_cli.training import callbacks

    text = QUICKSTART.read_text().replace(
        "    - {type: QuantDense, units: 10}",
        "    - {type: Dropout, rate: 0.5}\n    - {type: QuantDense, units: 10}")
    assert text.count("{type: Dropout, rate: 0.5}") == 1, "the Dropout was not added"
    config = tmp_path / "dropout.yaml"
    config.write_text(text)
    args = ["train", str(config), "training.epochs=3", "training.steps_per_epoch=6",
            "training.batch_size=16", "training.deterministic=true"]
    assert main([*args, "--output", str(tmp_path / "whole")]) == 0
    original = callbacks._save_checkpoint

    def stop_after_one(job, state, improved):
        original(job, state, improved)
        if state.epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks, "_save_checkpoint", stop_after_one)
    assert main([*args, "--output", str(tmp_path / "cut")]) == 130
    monkeypatch.setattr(callbacks, "_save_checkpoint", original)
    (cut,) = (tmp_path / "cut").iterdir()
    assert main(["train", "--resume", str(cut)]) == 0
    (whole,) = (tmp_path / "whole").iterdir()
    from bnn_cli.models import load_model

    dropouts = [layer for layer in load_model(whole / "model.keras", compile=False).layers
                if type(layer).__name__ == "Dropout"]
    assert len(dropouts) == 1 and dropouts[0].rate == 0.5  # the model trained had it

    def rows(run):
        return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]

    for a, b in zip(rows(cut), rows(whole), strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-6)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-6)
