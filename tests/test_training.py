"""`bnn train` / `bnn eval` end to end on the embedded digits (small and fast)."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bnn_cli.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
# Small and quick: 3 epochs of at most 12 steps.
VALIDATION = "train[90%:]"  # the quickstart's validation split
FAST = ["training.epochs=3", "training.steps_per_epoch=12", "training.batch_size=32"]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Iterator[str]:
    """A private TFDS data_dir; the embedded digits are prepared into it on first use."""
    path = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as env:
        env.setenv("TFDS_DATA_DIR", str(path))
        yield str(path)


def _train(tmp_path: Path, *extra: str) -> tuple[int, Path]:
    code = main(["train", str(QUICKSTART), *FAST, *extra, "--output", str(tmp_path)])
    runs = sorted(p for p in tmp_path.iterdir() if p.is_dir())
    return code, runs[-1]


def _weights(run: Path) -> list[np.ndarray]:
    from bnn_cli.assemble.vetting import load_vetted_model

    return load_vetted_model(run / "model.keras").get_weights()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, data_dir) -> Path:
    code, run = _train(tmp_path_factory.mktemp("runs"))
    assert code == 0
    return run


def test_run_directory_has_everything(finished_run: Path):
    names = {p.name for p in finished_run.iterdir()}
    assert {"config.yaml", "config.resolved.yaml", "overrides.json", "summary.txt",
            "summary.json", "checkpoints", "metrics.csv", "metrics.jsonl", "tensorboard",
            "model.keras", "run.json"} <= names
    assert (finished_run / "config.yaml").read_text() == QUICKSTART.read_text()
    status = json.loads((finished_run / "run.json").read_text())
    assert status["status"] == "completed"
    assert status["epochs_done"] == 3
    assert status["wall_time"] > 0
    rows = [json.loads(line) for line in (finished_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert all({"loss", "accuracy", "val_loss", "val_accuracy", "learning_rate"} <= set(r)
               for r in rows)
    with (finished_run / "metrics.csv").open() as f:
        assert [int(r["epoch"]) for r in csv.DictReader(f)] == [1, 2, 3]
    ck = finished_run / "checkpoints"
    last = json.loads((ck / "last.json").read_text())["checkpoint"]
    best = json.loads((ck / "best.json").read_text())["checkpoint"]
    assert last == "epoch-0003"
    best_epoch = max(rows, key=lambda r: r["val_accuracy"])["epoch"]
    assert best == f"epoch-{best_epoch:04d}"
    # Only the checkpoints a pointer refers to are kept.
    assert {p.name for p in ck.iterdir() if p.is_dir()} == {last, best}
    state = json.loads((ck / last / "state.json").read_text())
    assert state["epoch"] == 3 and len(state["history"]) == 3
    assert any((finished_run / "tensorboard").rglob("events.out.tfevents.*"))
    summary = json.loads((finished_run / "summary.json").read_text())
    assert summary["total_params"] > 0


def test_eval_of_run_reports_training_accuracy(finished_run: Path, capsys):
    rows = [json.loads(x) for x in (finished_run / "metrics.jsonl").read_text().splitlines()]
    capsys.readouterr()
    assert main(["eval", str(finished_run), "--checkpoint", "last", "--split", VALIDATION,
                 "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["metrics"]["accuracy"] == pytest.approx(rows[-1]["val_accuracy"], abs=1e-6)
    assert (finished_run / "eval-train-90-epoch-0003.json").is_file()


def test_eval_of_best_checkpoint_file_and_model_file(finished_run: Path, capsys):
    rows = [json.loads(x) for x in (finished_run / "metrics.jsonl").read_text().splitlines()]
    best = max(r["val_accuracy"] for r in rows)
    ck = finished_run / "checkpoints"
    best_dir = ck / json.loads((ck / "best.json").read_text())["checkpoint"]
    capsys.readouterr()
    assert main(["eval", str(best_dir / "ckpt.index"), "--split", VALIDATION, "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["accuracy"] == pytest.approx(best)
    assert main(["eval", str(finished_run / "model.keras"), "--split", VALIDATION,
                 "--json"]) == 0
    final = json.loads(capsys.readouterr().out)["metrics"]["accuracy"]
    assert final == pytest.approx(rows[-1]["val_accuracy"], abs=1e-6)


def test_eval_errors_are_clean(tmp_path, capsys):
    assert main(["eval", str(tmp_path / "missing")]) == 2
    model = tmp_path / "m.keras"
    model.write_bytes(b"not a model")
    assert main(["eval", str(model)]) == 2
    err = capsys.readouterr().err
    assert "pass --config" in err and "Traceback" not in err


def test_offline_dataset_error_is_clear(tmp_path, capsys, data_dir):
    code = main(["check", str(QUICKSTART), "data.dataset=cifar100",
                 "model.inputs=[{shape: [32, 32, 3]}]"])
    # An explicit input shape lets `check` check the model of a dataset that is not
    # prepared (the zoo's ImageNet configs); it says the data went unchecked.
    out = capsys.readouterr().out
    assert code == 0 and "the data section was NOT checked" in out and "cifar100" in out
    code = main(["train", str(QUICKSTART), "data.dataset=cifar100", "--output", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert "cifar100" in err and "--data-dir" in err
    assert not list(tmp_path.iterdir()), "nothing is written for a run that cannot start"


def _interrupt_after_first_checkpoint(run_root: Path, sig: int, epochs: int = 3,
                                      steps: int = 40) -> tuple[int, Path, str]:
    """Start `bnn train` in a subprocess, wait until its first checkpoint exists (failing
    clearly if the process ends first or none comes), then send it ``sig``."""
    cmd = [sys.executable, "-m", "bnn_cli.cli", "train", str(QUICKSTART),
           f"training.epochs={epochs}", f"training.steps_per_epoch={steps}",
           "training.batch_size=16", "--output", str(run_root)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    try:
        while not list(run_root.glob("*/checkpoints/last.json")):
            if proc.poll() is not None:
                _, err = proc.communicate()
                pytest.fail(f"training ended (exit {proc.returncode}) before its first "
                            f"checkpoint existed:\n{err.decode()[-2000:]}")
            if time.monotonic() > deadline:
                pytest.fail("no checkpoint after 240 s: the signal was not sent")
            time.sleep(0.05)
        assert proc.poll() is None, "training ended before it could be signalled"
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, next(run_root.iterdir()), err.decode()


def test_sigterm_once_a_checkpoint_exists_exits_143_and_the_run_is_interrupted(
        tmp_path, data_dir):
    from bnn_cli.experiments.table import list_runs
    from bnn_cli.rundir.run import RunDir

    epochs = 100  # (far more than run before the signal lands)
    returncode, run, err = _interrupt_after_first_checkpoint(tmp_path, signal.SIGTERM,
                                                             epochs=epochs, steps=3)
    assert returncode == 143, err[-2000:]
    assert "--resume" in err and "Traceback" not in err
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "interrupted"
    assert 1 <= status["epochs_done"] < epochs
    assert RunDir(run).read_record().status == "interrupted"
    (row,) = list_runs(tmp_path).rows
    assert row["status"] == "interrupted"
    # The checkpoint it left is the last finished epoch's, readable.
    last = json.loads((run / "checkpoints" / "last.json").read_text())["checkpoint"]
    assert last == f"epoch-{status['epochs_done']:04d}"
    RunDir(run).load_checkpoint("last")


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_signal_saves_and_resume_matches_uninterrupted(tmp_path, data_dir, sig, code, capsys):
    returncode, run, err = _interrupt_after_first_checkpoint(tmp_path / "a", sig)
    assert returncode == code, err
    assert "--resume" in err
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "interrupted"
    assert main(["train", str(run / "config.yaml"), "--resume", str(run)]) == 0
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    # The same run without interruption.
    assert main(["train", str(QUICKSTART), "training.epochs=3",
                 "training.steps_per_epoch=40", "training.batch_size=16",
                 "--output", str(tmp_path / "b")]) == 0
    other = next((tmp_path / "b").iterdir())
    ref = [json.loads(x) for x in (other / "metrics.jsonl").read_text().splitlines()]
    for got, want in zip(rows, ref, strict=True):
        assert got["loss"] == pytest.approx(want["loss"], rel=1e-4, abs=1e-5)
        assert got["val_accuracy"] == pytest.approx(want["val_accuracy"], abs=1e-6)
    for a, b in zip(_weights(run), _weights(other), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_nan_loss_fails_the_run_and_keeps_last_checkpoint(tmp_path, data_dir, capsys):
    # Pixels divided by 1e-38 overflow to inf in the first layer: the loss is NaN at once.
    code, run = _train(tmp_path, "data.preprocessing=[{type: normalize, mean: [0.0], "
                                 "std: [1.0e-38]}]")
    status = json.loads((run / "run.json").read_text())
    assert code == 1
    assert status["status"] == "failed"
    assert "non-finite loss" in status["error"]
    assert "Traceback" not in capsys.readouterr().err


@pytest.mark.slow
def test_quickstart_reaches_90_percent_and_eval_agrees(tmp_path, data_dir, capsys):
    """The README's main job, as written: >= 90 % test accuracy on the digits."""
    assert main(["train", str(QUICKSTART), "--output", str(tmp_path)]) == 0
    run = next(tmp_path.iterdir())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 20
    test = json.loads((run / "run.json").read_text())["test"]  # chosen on validation
    assert test["split"] == "test" and test["metrics"]["accuracy"] >= 0.90
    capsys.readouterr()
    assert main(["eval", str(run), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["split"] == "test" and report["checkpoint"] == test["checkpoint"]
    assert report["metrics"]["accuracy"] == pytest.approx(test["metrics"]["accuracy"],
                                                          abs=1e-6)


def test_plain_keras_loads_the_runs_model_after_import_bnn_cli(finished_run: Path):
    """`import bnn_cli` is enough for Keras to load (and compile) what bnn_cli saved:
    quantized layers, quantizers, constraints and the epoch learning-rate schedule."""
    script = ("import sys, bnn_cli, tf_keras as keras\n"
              "model = keras.models.load_model(sys.argv[1])\n"
              "print(type(model.layers[1]).__module__, "
              "type(model.optimizer._learning_rate).__name__)\n")
    proc = subprocess.run([sys.executable, "-c", script, str(finished_run / "model.keras")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.split() == ["bnn_cli.layers", "EpochSchedule"]


def test_one_fit_per_stage(tmp_path, data_dir, monkeypatch):
    """The loop calls `fit` once for all of a stage's epochs (a per-epoch call set up
    new iterators each time, which made short epochs twice as slow as a plain script)."""
    from bnn_cli._keras import keras

    calls: list[tuple[int, int]] = []
    real_fit = keras.Model.fit

    def fit(self, *args, **kwargs):
        calls.append((kwargs["initial_epoch"], kwargs["epochs"]))
        return real_fit(self, *args, **kwargs)

    monkeypatch.setattr(keras.Model, "fit", fit)
    code, run = _train(tmp_path)
    assert code == 0 and calls == [(0, 3)]
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
