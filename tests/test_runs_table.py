"""bnn runs: one row per run directory, its status told by the lock, and what
distinguishes it from its siblings; HParams for TensorBoard in every run."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import QUICKSTART, TINY, train_tiny

from bnn_cli.cli import main
from bnn_cli.experiments.table import list_runs
from bnn_cli.rundir.run import RunDir

LR = "training.learning_rate.initial"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    a = train_tiny(root / "a")
    b = train_tiny(root / "b", f"{LR}=0.005")
    folder = root / "all"
    folder.mkdir()
    a, b = a.rename(folder / a.name), b.rename(folder / f"{b.name}-b")
    return folder, a, b


def test_one_row_per_run_with_what_distinguishes_it(two_runs, capsys):
    folder, a, b = two_runs
    assert main(["runs", str(folder), "--json"]) == 0
    rows = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert set(rows) == {a.name, b.name}
    for row in rows.values():
        assert row["status"] == "completed" and row["epochs_done"] == 1
        assert row["monitor"] == "val_accuracy" and 0 <= row["best"] <= 1
        assert row["best_epoch"] == 1 and "accuracy" in row["test"]
        assert row["wall_time"] > 0
    # Only the key that differs between the siblings (not their names or start times).
    assert rows[b.name]["differs"] == {LR: "0.005"}
    assert rows[a.name]["differs"] == {LR: "0.01"}
    assert main(["runs", str(folder)]) == 0
    out = capsys.readouterr().out
    assert a.name in out and b.name in out and f"{LR}=0.005" in out and "completed" in out


def test_a_run_without_siblings_shows_its_overrides(two_runs, capsys):
    folder, a, _ = two_runs
    report = list_runs(folder.parent / "b")  # (empty now: its run was moved)
    assert report.rows == []
    alone = list_runs(a)  # DIR may be a run directory itself
    assert len(alone.rows) == 1
    assert alone.rows[0]["differs"] == dict(o.split("=", 1) for o in TINY)


def test_sort_and_filter(two_runs, capsys):
    folder, a, b = two_runs
    assert [Path(r["path"]) for r in list_runs(folder, sort=LR).rows] == [b, a]
    assert [Path(r["path"]) for r in list_runs(folder, sort=f"-{LR}").rows] == [a, b]
    assert len(list_runs(folder, filters=["status=completed"]).rows) == 2
    assert list_runs(folder, filters=["status=failed"]).rows == []
    only = list_runs(folder, filters=[f"{LR}=0.005"]).rows
    assert [Path(r["path"]) for r in only] == [b]
    assert len(list_runs(folder, filters=["name=*-b"]).rows) == 1
    for bad, message in ((["--filter", "status"], "is not KEY=VALUE"),
                         (["--filter", "training.learning_rat=1"], "no run has a config key"),
                         (["--sort", "bestt"], "did you mean 'best'")):
        assert main(["runs", str(folder), *bad]) == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and "Traceback" not in err
    assert main(["runs", str(folder / "nowhere")]) == 2
    assert "is not a folder" in capsys.readouterr().err


# Three copies of a run, each given distinct values of every sortable column in its
# run.json: the expected orders come from this table, not from the code under test.
SORTABLE = {
    "x": {"status": "interrupted", "started": "2026-01-03T10:00:00", "epochs_done": 2,
          "best": 0.5, "test": 0.7, "wall_time": 30.0},
    "y": {"status": "completed", "started": "2026-01-01T10:00:00", "epochs_done": 3,
          "best": 0.9, "test": 0.4, "wall_time": 10.0},
    "z": {"status": "failed", "started": "2026-01-02T10:00:00", "epochs_done": 1,
          "best": 0.1, "test": 0.6, "wall_time": 20.0},
}
# best (val_accuracy) and test (accuracy) sort best first: higher first; the rest rise.
HIGHER_FIRST = {"best", "test"}


def test_every_sort_key_orders_and_reverses_through_the_cli(two_runs, tmp_path, capsys):
    import shutil

    from bnn_cli.experiments.table import SORT_KEYS

    _, a, _ = two_runs
    folder = tmp_path / "sortable"
    for name, values in SORTABLE.items():
        run = folder / f"run-{name}"
        shutil.copytree(a, run)
        status = json.loads((run / "run.json").read_text())
        status.update(status=values["status"], started=values["started"],
                      epochs_done=values["epochs_done"], wall_time=values["wall_time"],
                      best={"epoch": 1, "val_accuracy": values["best"]})
        status["test"]["metrics"] = {"accuracy": values["test"], "loss": 1.0}
        (run / "run.json").write_text(json.dumps(status))
    column = {"name": None, "epochs": "epochs_done"}
    assert set(SORT_KEYS) <= {*SORTABLE["x"], *column}, "a sort key this test does not cover"
    for key in SORT_KEYS:
        field = column.get(key, key)
        expected = sorted(SORTABLE, key=lambda n, f=field: n if f is None else SORTABLE[n][f],
                          reverse=key in HIGHER_FIRST)
        for sort, order in ((key, expected), (f"-{key}", expected[::-1])):
            assert main(["runs", str(folder), "--sort", sort, "--json"]) == 0
            rows = json.loads(capsys.readouterr().out)["runs"]
            assert [Path(r["path"]).name for r in rows] == [f"run-{n}" for n in order], sort
    assert main(["runs", str(folder), "--sort", "-best"]) == 0  # the table, reversed
    out = capsys.readouterr().out
    assert out.index("run-z") < out.index("run-x") < out.index("run-y")


def test_every_run_writes_its_hyperparameters_for_tensorboard(two_runs):
    from bnn_cli._keras import tf

    _, _, b = two_runs
    files = [p for p in (b / "tensorboard").iterdir() if p.is_file()]
    assert files, "no event file at the top of the run's tensorboard folder"
    values = {}
    for event in tf.compat.v1.train.summary_iterator(str(files[0])):
        for value in event.summary.value:
            if value.metadata.plugin_data.plugin_name == "hparams":
                from tensorboard.plugins.hparams import plugin_data_pb2

                data = plugin_data_pb2.HParamsPluginData.FromString(
                    value.metadata.plugin_data.content)
                if data.HasField("session_start_info"):
                    values = {k: v for k, v in data.session_start_info.hparams.items()}
    assert values[LR].number_value == pytest.approx(0.005)
    assert values["training.optimizer.type"].string_value == "Adam"
    assert values["data.dataset"].string_value == "sklearn_digits"
    assert not any(k.startswith("model.") for k in values)


def test_a_killed_run_is_interrupted_not_running(tmp_path):
    """kill -9 leaves run.json saying running; the free lock says otherwise."""
    out = tmp_path / "k"
    proc = subprocess.Popen(
        [sys.executable, "-m", "bnn_cli.cli", "train", str(QUICKSTART), "training.epochs=200",
         "training.steps_per_epoch=2", "training.batch_size=16", "--output", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    deadline = time.monotonic() + 120
    try:
        while True:
            assert proc.poll() is None and time.monotonic() < deadline
            found = list(out.glob("quickstart-*/metrics.jsonl")) if out.is_dir() else []
            if found and found[0].read_text().strip():
                break
            time.sleep(0.05)
        (row,) = list_runs(out).rows
        assert row["status"] == "running"  # alive: it holds the lock
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    run = found[0].parent
    assert json.loads((run / "run.json").read_text())["status"] == "running"
    (row,) = list_runs(out).rows
    assert row["status"] == "interrupted" and row["epochs_done"] >= 1
    assert list_runs(out, filters=["status=interrupted"]).rows
    assert RunDir(run).read_record().status == "interrupted"
