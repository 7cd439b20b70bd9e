"""scripts/accuracy_table.py: several seeds to one row, time to accuracy in reference
epochs and the training compute, from run directories (no training here)."""

from __future__ import annotations

import json
import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "scripts"))
import accuracy_table  # noqa: E402


def fake_run(folder, test, seconds, macs, **wall):
    """A completed run directory as `bnn train` leaves it (the fields the table reads)."""
    folder.mkdir(parents=True)
    rows = [{"epoch": i + 1, "val_accuracy": 0.9 + 0.01 * i, "seconds": s}
            for i, s in enumerate(seconds)]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "run.json").write_text(json.dumps({
        "status": "completed", "epochs_done": len(rows), "wall_time": sum(seconds),
        "best": {"val_accuracy": rows[-1]["val_accuracy"], "epoch": len(rows)},
        "test": {"metrics": {"accuracy": test}, "checkpoint": "x", "selected_on": "v"},
        "compute": {"examples": 100, "training_macs": macs}}))
    (folder / accuracy_table.WALL_FILE).write_text(json.dumps(
        {"process_seconds": sum(seconds) + 10, **wall}))
    return folder


def test_seeds_make_one_row_with_mean_spread_reference_epochs_and_compute(tmp_path,
                                                                           monkeypatch):
    runs = [fake_run(tmp_path / f"s{i}", test, [40.0, 50.0], {"1": 3e12, "32": 1e10})
            for i, test in enumerate([0.9950, 0.9960, 0.9955])]
    table = tmp_path / "docs" / "table"
    monkeypatch.setattr(sys, "argv", [
        "accuracy_table.py", "--only", "mnist_bnn_fast", "--seeds", "0", "1", "2",
        "--skip-fp", "--reference-epoch", "20", "--table", str(table),
        *[f"--run=mnist_bnn_fast={r}" for r in runs]])
    assert accuracy_table.main() == 0
    row = json.loads(table.with_suffix(".json").read_text())["mnist_bnn_fast"]
    assert [s["seed"] for s in row["seeds"]] == [0, 1, 2]
    assert row["reference_epoch_s"] == 20
    assert row["seeds"][0]["curve"] == [[40.0, 0.9], [90.0, 0.91]]
    text = table.with_suffix(".md").read_text()
    line = next(x for x in text.splitlines() if "mnist_bnn_fast" in x)
    # (100 s a process = 5 reference epochs of 20 s)
    assert "| 1.7 min | 5.0 (5.0, 5.0, 5.0) |" in line
    assert "**99.55 %** mean of 3 seeds (99.50, 99.60, 99.55; spread 0.10)" in line
    assert "| 3.00e+12 / 1.00e+10 |" in line
    assert (table.parent / "time_to_accuracy.png").stat().st_size > 1000


@pytest.mark.parametrize("runs,cell", [
    ([{"test_accuracy": 0.9}], "90.00 %"),
    ([{"test_accuracy": 0.9}, {"test_accuracy": 0.8}],
     "**85.00 %** mean of 2 seeds (90.00, 80.00; spread 10.00)"),
])
def test_accuracy_cell(runs, cell):
    assert accuracy_table.accuracy_cell(runs) == cell


def test_rows_without_a_reference_or_compute_say_so():
    run = {"process_seconds": None, "train_seconds": 60.0, "compute": None}
    assert accuracy_table.time_cell([run], None) == "—"
    assert accuracy_table.time_cell([run], 30.0) == "2.0"
    assert accuracy_table.compute_cell([run]) == "—"


def test_runs_made_on_other_machines_keep_their_own_reference_epoch(tmp_path, monkeypatch):
    """Seeds of one row run on two machines: each run's wall time is divided by the
    reference epoch measured beside it (process_wall.json), not by today's."""
    slow = fake_run(tmp_path / "s0", 0.93, [90.0, 100.0], {"1": 1e12},
                    reference_epoch_s=40.0, cpu="old CPU")
    fast = fake_run(tmp_path / "s1", 0.93, [40.0, 50.0], {"1": 1e12})  # (no unit of its own)
    table = tmp_path / "table"
    monkeypatch.setattr(sys, "argv", [
        "accuracy_table.py", "--only", "fashion_mnist_bnn_fast", "--seeds", "0", "1",
        "--skip-fp", "--reference-epoch", "20", "--table", str(table),
        f"--run=fashion_mnist_bnn_fast={slow}", f"--run=fashion_mnist_bnn_fast={fast}"])
    assert accuracy_table.main() == 0
    text = table.with_suffix(".md").read_text()
    line = next(x for x in text.splitlines() if "fashion_mnist_bnn_fast" in x)
    assert "| 5.0 (5.0, 5.0) |" in line  # 200 s / 40 s and 100 s / 20 s
    assert "40.0 s on old CPU" in text and "20.0 s on " in text
    assert (table.parent / "time_to_accuracy.png").stat().st_size > 1000


def test_runs_trained_here_keep_the_reference_measured_beside_them(tmp_path, monkeypatch):
    made = iter([fake_run(tmp_path / f"r{i}", 0.93, [40.0, 50.0], {"1": 1e12})
                 for i in range(2)])
    monkeypatch.setattr(accuracy_table, "train", lambda *a, **k: next(made))
    measured = iter([14.0, 16.0])  # before and after the runs
    monkeypatch.setattr(accuracy_table.benchmark, "reference_epoch", lambda d: next(measured))
    (tmp_path / "data" / "fashion_mnist").mkdir(parents=True)
    monkeypatch.setattr(sys, "argv", [
        "accuracy_table.py", "--only", "fashion_mnist_bnn_fast", "--seeds", "0", "1",
        "--skip-fp", "--data-dir", str(tmp_path / "data"), "--table", str(tmp_path / "t")])
    assert accuracy_table.main() == 0
    for i in range(2):
        wall = json.loads((tmp_path / f"r{i}" / accuracy_table.WALL_FILE).read_text())
        assert wall["reference_epoch_s"] == 15.0 and wall["process_seconds"] == 100.0
        assert wall["cpu"]  # (this machine's, in words)
