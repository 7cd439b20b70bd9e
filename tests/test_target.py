"""Time to accuracy: ``training.target`` ends a stage once its metric reaches a value,
and run.json records when the final model did (epoch, seconds, examples seen) and the
training compute spent (MACs by precision, from bnn's own summary)."""

import json
from pathlib import Path

import pytest
from conftest import QUICKSTART, train_tiny

from bnn_cli.cli import main


def record(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_reached_target_ends_the_run_and_records_its_time_and_compute(tmp_path):
    run = train_tiny(tmp_path / "runs", "training.epochs=4",
                     "training.target={monitor: val_loss, value: 1.0e+6}")
    info = record(run)
    assert info["status"] == "completed" and info["epochs_done"] == 1  # (not 4)
    target = info["target"]
    assert target["monitor"] == "val_loss" and target["value"] == 1e6
    assert target["epoch"] == 1 and target["reached"] == rows(run)[0]["val_loss"]
    assert 0 < target["seconds"] <= info["wall_time"]
    assert target["examples"] == 3 * 16  # steps_per_epoch x batch_size
    summary = json.loads((run / "summary.json").read_text())["macs_by_precision"]
    assert target["training_macs"] == {bits: 3 * n * 48 for bits, n in summary.items()}
    assert "test" in info  # the checkpoint chosen on validation, tested


def test_a_target_never_reached_trains_every_epoch_and_says_so(tmp_path):
    run = train_tiny(tmp_path / "runs", "training.epochs=2",
                     "training.target={value: 2.0}")  # val_accuracy >= 2: never
    info = record(run)
    assert info["epochs_done"] == 2
    assert info["target"]["reached"] is None and info["target"]["monitor"] == "val_accuracy"
    assert info["target"]["examples"] == 2 * 48


def test_each_stage_ends_at_the_target_and_the_final_stage_is_recorded(tmp_path):
    config = tmp_path / "staged.yaml"
    config.write_text(QUICKSTART.read_text() + """
stages:
  - name: first
    set: {training.epochs: 3}
  - name: second
    set: {training.epochs: 3}
""")
    out = tmp_path / "runs"
    assert main(["train", str(config), "training.steps_per_epoch=3",
                 "training.batch_size=16",
                 "training.target={monitor: val_loss, value: 1.0e+6}",
                 "--output", str(out)]) == 0
    (run,) = out.iterdir()
    assert [(r["epoch"], r["stage"]) for r in rows(run)] == [(1, "first"), (2, "second")]
    target = record(run)["target"]
    assert target["stage"] == "second" and target["epoch"] == 2
    assert target["examples"] == 2 * 48


def test_every_run_records_its_training_compute_so_far(tmp_path):
    """run.json's ``compute`` (examples seen, training MACs) is kept at every epoch, with
    a target or without, so an interrupted run says what it spent too."""
    run = train_tiny(tmp_path / "runs", "training.epochs=2")
    info = record(run)
    assert "target" not in info
    summary = json.loads((run / "summary.json").read_text())["macs_by_precision"]
    assert info["compute"] == {"examples": 2 * 48, "training_macs": {
        bits: 3 * n * 2 * 48 for bits, n in summary.items()}}


def test_a_target_on_an_unlogged_metric_is_located(tmp_path, capsys):
    assert main(["check", str(QUICKSTART), "training.target={monitor: val_acc, value: 1}"]) \
        == 2
    err = capsys.readouterr().err
    assert "training.target.monitor: metric 'val_acc' is not logged" in err
    assert "did you mean 'val_accuracy'" in err


@pytest.mark.parametrize("mode,value,reached", [("max", 0.5, True), ("max", 0.51, False),
                                                 ("min", 0.5, True), ("min", 0.49, False)])
def test_reaching_follows_the_monitor_rule(mode, value, reached):
    from bnn_cli.config.schema import TrainingConfig
    from bnn_cli.training.state import reaches_target

    metric = "val_accuracy" if mode == "max" else "val_loss"
    training = TrainingConfig(monitor=metric, target={"value": value})
    assert reaches_target(training, {metric: 0.5}) is reached
