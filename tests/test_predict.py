"""``bnn predict``: a run directory, every export format and image files give the trained
model's own predictions, with class names and true labels; user mistakes exit 2."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICKSTART, train_tiny

from bnn_cli.cli import main

SPLIT = "test[:10]"
EXPORTS = {"keras": "model.keras", "saved_model": "saved_model", "tflite": "model.tflite",
           "lce": "model-lce.tflite"}
KEYS = {"target", "model", "split", "top_k", "num_classes", "predictions", "note"}
PREDICTION_KEYS = {"input", "top", "label", "label_name", "changes"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def expected(run):
    """The trained model's probabilities and the true labels of SPLIT, computed here."""
    from bnn_cli.data import pipeline as data
    from bnn_cli.deploy.targets import TargetOptions, load_trained

    job, _, _ = load_trained(run, TargetOptions(checkpoint="best"))
    ds = data.load_split(job.checked.spec.data, SPLIT, training=False, batch_size=10,
                         seed=None, data_dir=job.data_dir)
    ((x, y),) = list(ds.as_numpy_iterator())
    return job.model.predict(x, verbose=0), y.argmax(-1) if y.ndim == 2 else y


def predict(*args, capsys) -> dict:
    capsys.readouterr()
    assert main(["predict", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # stdout is the JSON alone


def top1(report: dict) -> list[int]:
    return [p["top"][0]["class"] for p in report["predictions"]]


def _files(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in folder.rglob("*")}


def test_split_on_the_run_directory(run, expected, capsys):
    probabilities, labels = expected
    before = _files(run)
    report = predict(run, "--split", SPLIT, "--top-k", "4", capsys=capsys)
    assert _files(run) == before  # nothing written into the run
    assert set(report) == KEYS and report["split"] == SPLIT
    assert report["model"] == "checkpoint epoch-0001"
    assert report["top_k"] == 4 and report["num_classes"] == 10
    assert len(report["predictions"]) == 10
    for i, p in enumerate(report["predictions"]):
        assert set(p) == PREDICTION_KEYS and p["input"] == f"{SPLIT} #{i}"
        assert p["label"] == labels[i] and p["label_name"] == str(labels[i])
        assert len(p["top"]) == 4 and p["changes"] == []
        shown = [c["probability"] for c in p["top"]]
        assert shown == sorted(shown, reverse=True)
        best = int(probabilities[i].argmax())
        assert p["top"][0]["class"] == best and p["top"][0]["name"] == str(best)
        assert p["top"][0]["probability"] == pytest.approx(probabilities[i, best], abs=1e-6)
        for c in p["top"]:
            assert c["probability"] == pytest.approx(probabilities[i, c["class"]], abs=1e-6)


def test_predictions_on_the_test_split_score_the_runs_recorded_accuracy(run, capsys):
    """Independently of load_trained: `bnn predict` on the whole test split gives the
    true labels as the dataset stores them, and the accuracy that training recorded in
    run.json for the checkpoint it chose."""
    status = json.loads((run / "run.json").read_text())
    assert status["test"]["split"] == "test"
    report = predict(run, "--split", "test", "--top-k", "1", capsys=capsys)
    import tensorflow_datasets as tfds

    size = _digits_builder(tfds).info.splits["test"].num_examples
    labels = [label for _, label in _raw_test_images(size)]
    assert len(report["predictions"]) == len(labels) == size
    assert [p["label"] for p in report["predictions"]] == labels
    accuracy = np.mean([top == label for top, label in zip(top1(report), labels, strict=True)])
    assert accuracy == pytest.approx(status["test"]["metrics"]["accuracy"],
                                     abs=1e-6 + 1 / len(labels))


def test_top_k_is_clipped_and_printed(run, capsys):
    report = predict(run, "--split", "test[:2]", "--top-k", "50", capsys=capsys)
    assert report["top_k"] == 10
    assert all(len(p["top"]) == 10 for p in report["predictions"])
    assert sum(c["probability"] for c in report["predictions"][0]["top"]) == \
        pytest.approx(1.0, abs=1e-4)
    capsys.readouterr()
    assert main(["predict", str(run), "--split", "test[:2]"]) == 0
    out = capsys.readouterr().out
    assert "top 3 of 10 classes" in out and "test[:2] #1: " in out and "(true: " in out


@pytest.mark.parametrize("fmt", EXPORTS)
def test_every_export_format_agrees_with_the_run(run, expected, fmt, capsys):
    if fmt == "lce":
        pytest.importorskip("larq_compute_engine", reason="the optional "
                                                          "larq-compute-engine package is "
                                                          "not installed")
    capsys.readouterr()
    assert main(["export", str(run), "--format", fmt]) == 0
    path = run / "export" / EXPORTS[fmt]
    report = predict(path, "--split", SPLIT, capsys=capsys)
    assert report["model"] == f"{fmt} file, config of run {run}"
    assert top1(report) == list(expected[0].argmax(-1))
    assert [p["label"] for p in report["predictions"]] == list(expected[1])


def test_file_outside_a_run_with_config(run, expected, tmp_path, capsys):
    shutil.copy(run / "model.keras", tmp_path / "copy.keras")
    report = predict(tmp_path / "copy.keras", "--split", SPLIT, "--config", QUICKSTART,
                     capsys=capsys)
    assert top1(report) == list(expected[0].argmax(-1))
    assert report["model"] == f"keras file, config {QUICKSTART}"


def _raw_test_images(count: int):
    """The first test examples as the dataset stores them (uint8, 8x8x1) and labels."""
    import tensorflow_datasets as tfds

    import bnn_cli.data.pipeline  # noqa: F401 - registers the embedded digits builder

    builder = _digits_builder(tfds)
    ds = builder.as_dataset(split=f"test[:{count}]", shuffle_files=False)
    return [(ex["image"], int(ex["label"])) for ex in ds.as_numpy_iterator()]


@pytest.fixture(scope="module")
def images(run, tmp_path_factory):
    """test[0] as a native 8x8 grey PNG, and as a 3x larger RGB JPEG."""
    import tensorflow as tf

    folder = tmp_path_factory.mktemp("images")
    ((image, _),) = _raw_test_images(1)
    assert image.dtype == np.uint8 and image.shape == (8, 8, 1) and image.max() > 16
    png, jpeg = folder / "digit.png", folder / "digit-big.jpg"
    png.write_bytes(tf.io.encode_png(image).numpy())
    big = np.repeat(np.repeat(np.repeat(image, 3, axis=0), 3, axis=1), 3, axis=2)
    jpeg.write_bytes(tf.io.encode_jpeg(big, quality=100).numpy())
    return png, jpeg


def test_native_png_gives_the_split_example_prediction(run, images, capsys):
    png, _ = images
    from_split = predict(run, "--split", "test[:1]", "--top-k", "10", capsys=capsys)
    from_file = predict(run, png, "--top-k", "10", capsys=capsys)
    (p,) = from_file["predictions"]
    assert p["input"] == str(png) and p["changes"] == [] and p["label"] is None
    assert p["top"] == from_split["predictions"][0]["top"]  # same classes and values
    assert from_file["split"] is None


def test_native_png_preprocesses_exactly_as_the_split(run, images):
    """The PNG's model input equals the split's preprocessed example, bit for bit."""
    from bnn_cli.assemble.check import load_run_config
    from bnn_cli.data import pipeline as data
    from bnn_cli.deploy import predict as prediction
    from bnn_cli.rundir.run import RunDir

    checked = load_run_config(RunDir(run))
    png, _ = images
    _, x, _ = prediction._image_inputs(checked, [(str(png), prediction._decode(png))])
    ds = data.load_split(checked.spec.data, "test[:1]", training=False, batch_size=1,
                         seed=None, data_dir=checked.data_dir)
    ((split_x, _),) = list(ds.as_numpy_iterator())
    np.testing.assert_array_equal(x, split_x)


def test_resized_rgb_jpeg_says_what_changed(run, images, capsys):
    png, jpeg = images
    report = predict(run, jpeg, png, capsys=capsys)
    big, native = report["predictions"]
    assert big["changes"] == ["RGB -> grayscale", "resized 24x24 -> 8x8"]
    assert native["changes"] == []
    assert len(big["top"]) == 3 and 0 <= big["top"][0]["class"] < 10
    capsys.readouterr()
    assert main(["predict", str(run), str(jpeg)]) == 0
    out = capsys.readouterr().out
    assert f"{jpeg}: " in out and "(RGB -> grayscale, resized 24x24 -> 8x8)" in out


@pytest.mark.parametrize(("args", "message"), [
    (["{run}", "{tmp}/missing.png"], "{tmp}/missing.png: no such file"),
    (["{run}", "{tmp}/text.png"], "{tmp}/text.png is not an image file"),
    (["{run}"], "nothing to predict"),
    (["{run}", "{tmp}/text.png", "--split", "test"], "not both"),
    (["{run}", "--split", "tset[:3]"], "bad split 'tset[:3]'"),
    (["{run}", "--split", "test", "--top-k", "0"], "--top-k must be at least 1"),
    (["{tmp}/copy.keras", "--split", "test"], "{tmp}/copy.keras is not inside a run"),
    (["{tmp}/nowhere", "--split", "test"], "{tmp}/nowhere: no such file or directory"),
])
def test_user_mistakes_exit_2(run, tmp_path, capsys, args, message):
    (tmp_path / "text.png").write_text("not an image\n")
    shutil.copy(run / "model.keras", tmp_path / "copy.keras")
    capsys.readouterr()
    before = _files(run)
    assert main(["predict", *[a.format(run=run, tmp=tmp_path) for a in args]]) == 2
    captured = capsys.readouterr()
    assert message.format(tmp=tmp_path) in captured.err
    assert "Traceback" not in captured.err and captured.out == ""
    assert _files(run) == before


def test_logits_become_probabilities_with_a_note():
    from bnn_cli.deploy.predict import _probabilities

    probabilities, note = _probabilities(np.array([[2.0, -1.0, 0.5]]))
    assert probabilities.sum() == pytest.approx(1.0) and probabilities.argmax() == 0
    assert "not probabilities" in note
    same, none = _probabilities(np.array([[0.7, 0.2, 0.1]]))
    assert none is None and same.tolist() == [[0.7, 0.2, 0.1]]


def test_rgba_image_to_grey_dataset_form():
    import tensorflow as tf

    from bnn_cli.deploy.predict import _to_dataset_form

    class Feature:  # what _to_dataset_form reads of a TFDS Image feature
        shape, np_dtype = (8, 8, 1), np.uint8

    rgba = tf.concat([tf.fill((16, 4, 3), 1.0), tf.zeros((16, 4, 1))], axis=-1)
    image, changes = _to_dataset_form(rgba, Feature())
    assert changes == ["alpha channel dropped", "RGB -> grayscale", "resized 16x4 -> 8x8"]
    assert image.dtype == tf.uint8 and image.shape == (8, 8, 1)
    assert int(tf.reduce_min(image)) == int(tf.reduce_max(image)) == 255


def _digits_builder(tfds):
    """The digits as the runs here prepared them: in this session's private data_dir
    (TFDS read $TFDS_DATA_DIR when it was imported, maybe before conftest set it)."""
    return tfds.builder("sklearn_digits", data_dir=os.environ["TFDS_DATA_DIR"])
