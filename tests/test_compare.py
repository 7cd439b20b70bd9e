"""bnn compare and the pictures: curves on shared axes, config differences, PNGs that
are real and not empty."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import train_tiny

from bnn_cli.cli import main
from bnn_cli.config.monitor import best_epochs
from bnn_cli.plots import plot_history, plot_sweep

PNG = b"\x89PNG\r\n\x1a\n"
LR = "training.learning_rate.initial"


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("compare")
    return (train_tiny(root / "a", "training.epochs=2"),
            train_tiny(root / "b", "training.epochs=2", f"{LR}=0.003",
                       "model.layers[0].filters=32"))


def test_compare_draws_the_curves_and_lists_the_differences(runs, tmp_path, capsys):
    a, b = runs
    out = tmp_path / "cmp.png"
    assert main(["compare", str(a), str(b), "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 10_000
    diffs = {d["key"]: d["values"] for d in report["differences"]}
    assert diffs == {LR: ["0.01", "0.003"], "model.layers[0].filters": ["64", "32"]}
    assert [r["status"] for r in report["runs"]] == ["completed", "completed"]
    assert main(["compare", str(a), str(b), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert LR in text and "0.003" in text and "model.layers[0].filters" in text


def test_compare_refuses_what_is_not_a_run(runs, tmp_path, capsys):
    a, _ = runs
    assert main(["compare", str(a), str(tmp_path), "-o", str(tmp_path / "x.png")]) == 2
    err = capsys.readouterr().err
    assert "is not a run directory" in err and "Traceback" not in err
    assert main(["compare", str(a), str(a)]) == 2
    assert "given twice" in capsys.readouterr().err


def test_a_runs_curves_png(runs):
    a, _ = runs
    png = (a / "curves.png").read_bytes()
    assert png.startswith(PNG) and len(png) > 10_000


def test_curves_with_flip_ratios_stages_and_the_best_epoch(tmp_path):
    history = [{"epoch": e, "stage": "one" if e <= 3 else "two", "loss": 1 / e,
                "accuracy": 0.5 + e / 20, "flip_ratio/ste_sign": 0.1 / e,
                "flip_ratio/ste_sign_1": 0.2 / e, "val_loss": 1.2 / e,
                "val_accuracy": [0.5, 0.7, 0.6, 0.65, 0.8, 0.75][e - 1],
                "val_flip_ratio/ste_sign": 0.0, "learning_rate": 0.01 / e, "seconds": 1.0}
               for e in range(1, 7)]
    assert best_epochs(history, "val_accuracy", "max") == [2, 5]  # one per stage
    assert best_epochs(history, "val_loss", "min") == [3, 6]
    out = tmp_path / "curves.png"
    plot_history(history, out, title="t", monitor="val_accuracy", mode="max")
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 20_000


def test_sweep_picture_with_log_and_categorical_axes(tmp_path):
    rows = [{"trial": i + 1, "state": state, "value": value,
             "params": {LR: lr, "model.defaults.QuantConv2D.kernel_quantizer": q}}
            for i, (state, value, lr, q) in enumerate([
                ("completed", 0.9, "0.001", "ste_sign"), ("completed", 0.95, "0.01", "approx_sign"),
                ("pruned", 0.5, "0.0001", "ste_sign"), ("failed", None, "0.1", "approx_sign")])]
    axes = [{"key": LR, "log": True, "numeric": True, "values": None},
            {"key": "model.defaults.QuantConv2D.kernel_quantizer", "log": False,
             "numeric": False, "values": ["ste_sign", "approx_sign"]}]
    out = tmp_path / "results.png"
    plot_sweep(rows, axes, "val_accuracy", "max", out, title="sweep")
    assert out.read_bytes().startswith(PNG) and out.stat().st_size > 10_000
