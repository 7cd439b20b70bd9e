"""``bnn benchmark-model``: each .tflite runs in its own runtime, next to its float32
baseline, timed in interleaved rounds; the numbers reported are derived from the
samples taken (no timing thresholds: the machine is noisy)."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import train_tiny

from bnn_cli.cli import main


@pytest.fixture(scope="module")
def exports(tmp_path_factory) -> Path:
    """A tiny run's export folder with the float32 and int8 TFLite files."""
    run = train_tiny(tmp_path_factory.mktemp("runs"))
    for args in (["--format", "tflite"], ["--format", "tflite", "--int8"]):
        assert main(["export", str(run), *args]) == 0
    return run / "export"


def bench(*args, capsys) -> dict:
    capsys.readouterr()
    assert main(["benchmark-model", *map(str, args), "--runs", "7", "--warmup", "1",
                 "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _consistent(model: dict, path: Path) -> None:
    assert model["runs"] == 7 and model["size_bytes"] == path.stat().st_size
    assert 0 < model["min_ms"] <= model["p10_ms"] <= model["median_ms"] <= model["p90_ms"]


def test_int8_next_to_its_float32_model(exports, capsys):
    report = bench(exports / "model-int8.tflite", capsys=capsys)
    file, base = report["models"]
    assert file["path"].endswith("model-int8.tflite") and file["format"] == "tflite"
    assert base["path"].endswith("model.tflite")  # found beside it
    assert file["runtime"] == base["runtime"] == "tflite"
    _consistent(file, exports / "model-int8.tflite")
    _consistent(base, exports / "model.tflite")
    assert report["speedup_vs_float32"] == pytest.approx(base["median_ms"] / file["median_ms"])
    assert report["size_ratio_vs_float32"] == pytest.approx(
        file["size_bytes"] / base["size_bytes"])
    assert report["threads"] == 1 and "note" not in report


def test_lce_file_runs_in_lce_and_its_baseline_in_both(exports, capsys):
    pytest.importorskip("larq_compute_engine", reason="the optional larq-compute-engine "
                                                      "package is not installed")
    assert main(["export", str(exports.parent), "--format", "lce"]) == 0
    report = bench(exports / "model-lce.tflite", "--threads", "2", capsys=capsys)
    assert [(m["format"], m["runtime"]) for m in report["models"]] == [
        ("lce", "lce"), ("tflite", "lce"), ("tflite", "tflite")]
    file, same_runtime, _ = report["models"]
    assert report["speedup_vs_float32"] == pytest.approx(
        same_runtime["median_ms"] / file["median_ms"])
    assert "64-bit ARM" in report["note"] and report["threads"] == 2


def test_no_baseline_says_how_to_get_one(exports, tmp_path, capsys):
    alone = tmp_path / "alone.tflite"
    alone.write_bytes((exports / "model-int8.tflite").read_bytes())
    report = bench(alone, capsys=capsys)
    assert len(report["models"]) == 1 and "speedup_vs_float32" not in report
    assert "no float32 baseline" in report["note"]
    assert "bnn export RUN --format tflite" in report["note"]
    # --baseline names it explicitly.
    report = bench(alone, "--baseline", exports / "model.tflite", capsys=capsys)
    assert len(report["models"]) == 2


def test_the_text_report(exports, capsys):
    capsys.readouterr()
    assert main(["benchmark-model", str(exports / "model-int8.tflite"), "--runs", "3"]) == 0
    out = capsys.readouterr().out
    assert "median of 3 runs" in out and "vs float32 in the same runtime:" in out


def test_rounds_alternate_between_files(monkeypatch):
    """Each round times every file once, so noise hits them alike; each sample is the
    time its own invoke took (a fake clock that each invoke advances by a known step)."""
    from bnn_cli.deploy import latency
    from bnn_cli.deploy.latency import _alternate

    calls: list[str] = []
    clock = [100.0]  # seconds
    durations = {"a": iter([0.5, 0.5, 0.002, 0.004, 0.003]),  # 2 warm-ups, then 3 runs
                 "b": iter([0.7, 0.7, 0.010, 0.030, 0.020])}

    class Clock:
        @staticmethod
        def perf_counter():
            return clock[0]

    monkeypatch.setattr(latency, "time", Clock)

    class Fake:
        def __init__(self, name):
            self.name = name

        def input_shape(self):
            return (1, 4, 4, 1)

        def invoke(self, x):
            assert x.shape == (1, 4, 4, 1) and x.dtype == np.float32
            calls.append(self.name)
            clock[0] += next(durations[self.name])

    samples = _alternate([Fake("a"), Fake("b")], runs=3, warmup=2)
    assert calls == ["a", "a", "b", "b"] + ["a", "b"] * 3
    # Milliseconds of the timed runs only (the warm-ups' long calls are not counted).
    np.testing.assert_allclose(samples[0], [2.0, 4.0, 3.0], rtol=1e-9)
    np.testing.assert_allclose(samples[1], [10.0, 30.0, 20.0], rtol=1e-9)


@pytest.mark.parametrize(("args", "message"), [
    (["{tmp}/missing.tflite"], "no such file"),
    (["{exports}/model.tflite.check.json"], "not a model file"),
    (["{exports}/model-int8.tflite", "--runs", "0"], "at least 1"),
    (["{exports}/model-int8.tflite", "--baseline", "{tmp}/none.tflite"], "none.tflite"),
])
def test_user_mistakes_exit_2(exports, tmp_path, capsys, args, message):
    capsys.readouterr()
    argv = [a.format(exports=exports, tmp=tmp_path) for a in args]
    assert main(["benchmark-model", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_keras_file_is_refused_with_the_way_out(exports, tmp_path, capsys):
    assert main(["export", str(exports.parent), "--format", "keras"]) == 0
    capsys.readouterr()
    assert main(["benchmark-model", str(exports / "model.keras")]) == 2
    assert "export it with `bnn export RUN --format tflite`" in capsys.readouterr().err
