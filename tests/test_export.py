"""``bnn export``: each format round-trips through its own runtime and agrees with the
trained model; the inference form stores quantized kernels; user mistakes exit 2."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICKSTART, train_tiny

from bnn_cli.cli import main

FILES = {"keras": "model.keras", "saved_model": "saved_model", "tflite": "model.tflite"}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("runs"))


@pytest.fixture(scope="module")
def trained(run):
    """The trained model (best checkpoint) and the test split's inputs, loaded here."""
    from bnn_cli.deploy.export import split_inputs
    from bnn_cli.deploy.targets import TargetOptions, load_trained

    job, _, _ = load_trained(run, TargetOptions(checkpoint="best"))
    x = split_inputs(job)
    return job.model, x, job.model.predict(x, verbose=0)


def export(*args: str, capsys) -> dict:
    capsys.readouterr()
    assert main(["export", *map(str, args), "--json"]) == 0
    return json.loads(capsys.readouterr().out)  # stdout is the JSON alone


# Each runtime loads the file here independently of bnn_cli.deploy.export's own check.
def _keras_predict(path: Path, x: np.ndarray) -> np.ndarray:
    from bnn_cli.models import load_model

    return load_model(path, compile=False).predict(x, verbose=0)


def _saved_model_predict(path: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return loaded.serve(tf.constant(x)).numpy()


def _tflite_predict(path: Path, x: np.ndarray) -> np.ndarray:
    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    inp, out = interpreter.get_input_details()[0], interpreter.get_output_details()[0]
    rows = []
    for row in x:  # the file's own batch size of 1
        interpreter.allocate_tensors()
        interpreter.set_tensor(inp["index"], row[None].astype(np.float32))
        interpreter.invoke()
        rows.append(interpreter.get_tensor(out["index"])[0])
    return np.stack(rows)


RUNTIMES = {"keras": _keras_predict, "saved_model": _saved_model_predict,
            "tflite": _tflite_predict}


@pytest.mark.parametrize("fmt", FILES)
def test_each_format_round_trips(run, trained, fmt, capsys):
    _, x, expected = trained
    report = export(run, "--format", fmt, capsys=capsys)
    path = run / "export" / FILES[fmt]
    assert report["path"] == str(path) and report["checkpoint"] == "epoch-0001"
    assert report["examples"] == len(x) > 0
    assert report["top1_agreement"] == 1.0 and report["max_prob_diff"] < 1e-4

    actual = RUNTIMES[fmt](path, x)
    assert (actual.argmax(-1) == expected.argmax(-1)).all()
    assert np.abs(actual - expected).max() < 1e-4
    stored = json.loads(path.with_name(path.name + ".check.json").read_text())
    assert stored["top1_agreement"] == 1.0 and stored["examples"] == len(x)
    assert stored["size_bytes"] > 0


def _raw_test_split() -> tuple[np.ndarray, np.ndarray]:
    """The digits' test split read here and rescaled to [-1, 1] (the quickstart's only
    preprocessing), independently of bnn_cli's data pipeline and load_trained."""
    import tensorflow_datasets as tfds

    import bnn_cli.data.pipeline  # noqa: F401 - registers the embedded digits builder

    ds = _digits_builder(tfds).as_dataset(split="test", shuffle_files=False)
    examples = list(ds.as_numpy_iterator())
    x = np.stack([e["image"] for e in examples]).astype(np.float32) / 255.0 * 2.0 - 1.0
    return x, np.array([e["label"] for e in examples])


@pytest.mark.parametrize("fmt", FILES)
def test_each_format_scores_the_runs_recorded_test_accuracy(run, fmt, capsys):
    """The exported file, run in its own runtime on the raw test split, has the test
    accuracy that training recorded in run.json for the checkpoint it chose."""
    status = json.loads((run / "run.json").read_text())
    assert status["test"]["split"] == "test"
    export(run, "--format", fmt, capsys=capsys)
    x, labels = _raw_test_split()
    probabilities = RUNTIMES[fmt](run / "export" / FILES[fmt], x)
    accuracy = float(np.mean(probabilities.argmax(-1) == labels))
    # (within one example: a near tie may fall the other way in another runtime)
    assert accuracy == pytest.approx(status["test"]["metrics"]["accuracy"],
                                     abs=1.5 / len(labels))


def _quantized_layers(model):
    from bnn_cli.layers import QuantizerMixin

    return [layer for layer in model.layers if isinstance(layer, QuantizerMixin)]


def test_keras_export_stores_plus_minus_one_kernels(run, trained, capsys):
    from bnn_cli.models import load_model

    export(run, "--format", "keras", capsys=capsys)
    exported = load_model(run / "export" / "model.keras")
    model = trained[0]
    assert exported.optimizer is None  # training-only state dropped
    assert len(exported.weights) == len(model.weights)  # no latent copy kept beside
    layers = _quantized_layers(exported)
    assert len(layers) == 5
    for new, old in zip(layers, _quantized_layers(model), strict=True):
        assert new.kernel_quantizer is None
        assert set(np.unique(new.kernel.numpy())) == {-1.0, 1.0}
        # The input quantizer acts on activations: it stays.
        assert type(new.input_quantizer) is type(old.input_quantizer)


def test_latent_keeps_the_training_form(run, capsys):
    from bnn_cli.models import load_model

    report = export(run, "--format", "keras", "--latent", capsys=capsys)
    assert report["latent"] and report["path"].endswith("model-latent.keras")
    assert report["top1_agreement"] == 1.0
    exported = load_model(report["path"])
    for layer in _quantized_layers(exported):
        assert layer.kernel_quantizer is not None
        assert not set(np.unique(layer.kernel.numpy())) <= {-1.0, 1.0}
    assert report["size_bytes"] == report["float32_size_bytes"]


def test_inference_model_quantizes_every_kernel_kind():
    """Magnitude-aware sign keeps one scale per output channel; depthwise and pointwise
    kernels are replaced too; predictions do not change."""
    import bnn_cli as bnn
    from bnn_cli._keras import keras
    from bnn_cli.deploy.export import inference_model

    inp = keras.Input((6, 6, 3))
    x = bnn.layers.QuantConv2D(4, 3, kernel_quantizer="magnitude_aware_sign",
                               kernel_constraint="weight_clip", padding="same",
                               pad_values=1.0)(inp)
    x = bnn.layers.QuantSeparableConv2D(5, 3, input_quantizer="ste_sign",
                                        depthwise_quantizer="ste_sign",
                                        depthwise_constraint="weight_clip",
                                        pointwise_quantizer="ste_sign",
                                        pointwise_constraint="weight_clip")(x)
    out = keras.layers.Dense(3, activation="softmax")(keras.layers.Flatten()(x))
    model = keras.Model(inp, out)
    exported = inference_model(model)
    xs = np.random.default_rng(0).normal(size=(8, 6, 6, 3)).astype("float32")
    np.testing.assert_allclose(exported.predict(xs, verbose=0), model.predict(xs, verbose=0),
                               atol=1e-6)

    conv, separable = exported.layers[1], exported.layers[2]
    latent = model.layers[1].kernel.numpy()
    scale = np.abs(latent).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(conv.kernel.numpy(), scale * np.where(latent < 0, -1, 1),
                               rtol=1e-6)
    assert len(np.unique(np.abs(conv.kernel.numpy()))) == 4  # one scale per channel
    for kernel in (separable.depthwise_kernel, separable.pointwise_kernel):
        assert set(np.unique(kernel.numpy())) == {-1.0, 1.0}
    assert separable.depthwise_quantizer is None and separable.pointwise_quantizer is None
    assert separable.input_quantizer is not None


def test_sizes_are_printed(run, capsys):
    capsys.readouterr()
    assert main(["export", str(run), "--format", "tflite"]) == 0
    out = capsys.readouterr().out
    path = run / "export" / "model.tflite"
    assert f"({path.stat().st_size} bytes)" in out
    assert "float32 latent model:" in out and "top-1 agreement 100.00%" in out


def test_output_checkpoint_folder_and_overwrite(run, tmp_path, capsys):
    """--output, --checkpoint last and a checkpoint folder as the target; a SavedModel
    folder written again replaces the old one."""
    target = run / "checkpoints" / "epoch-0001"
    out = tmp_path / "deploy" / "sm"
    for _ in range(2):
        report = export(target, "--format", "saved_model", "--output", out,
                        "--checkpoint", "last", capsys=capsys)
        assert report["path"] == str(out) and report["top1_agreement"] == 1.0
    assert (out / "saved_model.pb").is_file()
    assert sorted(p.name for p in out.parent.iterdir()) == ["sm", "sm.check.json"]


def test_model_file_with_config(run, tmp_path, capsys):
    import shutil

    outside = tmp_path / "copy.keras"
    shutil.copy(run / "model.keras", outside)
    report = export(outside, "--format", "keras", "--config", QUICKSTART, capsys=capsys)
    assert report["checkpoint"] is None and report["top1_agreement"] == 1.0
    assert Path(report["path"]) == tmp_path / "export" / "model.keras"


@pytest.mark.parametrize(("args", "message"), [
    (["{run}", "--format", "onnx"], "unknown export format 'onnx'"),
    (["{run}", "--format", "keras", "--checkpoint", "middle"], "--checkpoint must be"),
    (["{tmp}/missing", "--format", "keras"], "no such file or directory"),
    (["{tmp}", "--format", "keras"], "is empty"),
    (["{run}/model.keras", "--format", "keras", "--config", "{tmp}/none.yaml"], "none.yaml"),
])
def test_user_mistakes_exit_2(run, tmp_path, capsys, args, message):
    capsys.readouterr()
    argv = [a.format(run=run, tmp=tmp_path) for a in args]
    assert main(["export", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "export").exists()


def test_lce_round_trips(run, trained, capsys):
    pytest.importorskip("larq_compute_engine", reason="the optional larq-compute-engine "
                                                      "package is not installed")
    from larq_compute_engine.tflite.python.interpreter import Interpreter

    _, x, expected = trained
    report = export(run, "--format", "lce", capsys=capsys)
    path = Path(report["path"])
    assert path == run / "export" / "model-lce.tflite"
    assert report["top1_agreement"] == 1.0 and report["max_prob_diff"] < 1e-4
    flatbuffer = path.read_bytes()
    assert b"LceBconv2d" in flatbuffer  # the binary convolutions were converted
    actual = Interpreter(flatbuffer, num_threads=1).predict(x)
    assert np.abs(actual - expected).max() < 1e-4
    # Bitpacked kernels: well under the float32 TFLite file's size.
    assert report["size_bytes"] < 0.7 * report["float32_size_bytes"]


def test_lce_without_its_package_says_what_to_install(run, monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "larq_compute_engine", None)  # import fails
    capsys.readouterr()
    assert main(["export", str(run), "--format", "lce"]) == 2
    err = capsys.readouterr().err
    assert "pip install larq-compute-engine==0.16.0" in err and "Traceback" not in err


def test_model_file_outside_a_run_needs_a_config(run, tmp_path, capsys):
    import shutil

    shutil.copy(run / "model.keras", tmp_path / "m.keras")
    capsys.readouterr()
    assert main(["export", str(tmp_path / "m.keras"), "--format", "tflite"]) == 2
    assert "pass --config" in capsys.readouterr().err


def test_int8_quantizes_real_layers_and_reports_accuracy(run, trained, capsys):
    """--int8: a smaller flatbuffer with int8 tensors, float input/output, and the
    accuracy change on the test split measured as a user would measure it."""
    from bnn_cli.deploy.export import split_examples
    from bnn_cli.deploy.targets import TargetOptions, load_trained

    report = export(run, "--format", "tflite", "--int8", capsys=capsys)
    path = Path(report["path"])
    assert path == run / "export" / "model-int8.tflite" and report["int8"]
    float_report = export(run, "--format", "tflite", capsys=capsys)
    assert report["size_bytes"] < 0.5 * float_report["size_bytes"]

    import tensorflow as tf

    interpreter = tf.lite.Interpreter(model_path=str(path))
    dtypes = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in dtypes  # weights/activations quantized inside
    assert interpreter.get_input_details()[0]["dtype"] == np.float32  # callers unchanged

    job, _, _ = load_trained(run, TargetOptions(checkpoint="best"))
    x, labels = split_examples(job, job.config.spec.data.test_split)
    model, _, expected = trained
    actual = _tflite_predict(path, x)
    assert report["accuracy"] == pytest.approx(np.mean(actual.argmax(-1) == labels))
    assert report["trained_accuracy"] == pytest.approx(np.mean(expected.argmax(-1) == labels))
    assert report["top1_agreement"] == pytest.approx(
        np.mean(actual.argmax(-1) == expected.argmax(-1)))
    capsys.readouterr()
    assert main(["export", str(run), "--format", "tflite", "--int8"]) == 0
    assert "test accuracy:" in capsys.readouterr().out


@pytest.mark.parametrize("fmt", ["keras", "lce"])
def test_int8_only_for_tflite(run, tmp_path, fmt, capsys):
    capsys.readouterr()
    out = tmp_path / "m"
    assert main(["export", str(run), "--format", fmt, "--int8", "--output", str(out)]) == 2
    assert "--int8 applies to --format tflite" in capsys.readouterr().err
    assert not out.exists()


@pytest.fixture(scope="module")
def larq_model(run):
    """The quickstart network built and briefly trained with Larq itself, its layers
    named as the config names them (HDF5/.keras weights are matched by name)."""
    import larq as lq

    from bnn_cli._keras import keras
    from bnn_cli.deploy.export import split_examples
    from bnn_cli.deploy.targets import TargetOptions, load_trained

    job, _, _ = load_trained(run, TargetOptions(checkpoint="best"))
    names = iter(layer.name for layer in job.model.layers[1:])
    binary = dict(kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                  use_bias=False)

    def bn():
        return keras.layers.BatchNormalization(momentum=0.9, scale=False, name=next(names))

    def conv(filters, **kw):
        return lq.layers.QuantConv2D(filters, 3, padding="same", name=next(names), **binary,
                                     **kw)

    inp = keras.Input((8, 8, 1))
    # (One layer per statement: the names are taken in the config's order.)
    x = conv(64)(inp)
    x = bn()(x)
    x = conv(64, input_quantizer="ste_sign", pad_values=1.0)(x)
    x = keras.layers.MaxPooling2D(2, name=next(names))(x)
    x = bn()(x)
    x = conv(128, input_quantizer="ste_sign", pad_values=1.0)(x)
    x = keras.layers.MaxPooling2D(2, name=next(names))(x)
    x = bn()(x)
    x = keras.layers.Flatten(name=next(names))(x)
    for units in (256, 10):
        x = lq.layers.QuantDense(units, input_quantizer="ste_sign", name=next(names),
                                 **binary)(x)
        x = bn()(x)
    model = keras.Model(inp, keras.layers.Activation("softmax", name=next(names))(x))
    x_train, y_train = split_examples(job, "train", limit=512)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(x_train, y_train, epochs=1, batch_size=64, verbose=0)
    x_test, _ = split_examples(job, job.config.spec.data.test_split)
    return model, x_test, model.predict(x_test, verbose=0)


@pytest.mark.parametrize(("suffix", "fmt"), [(".h5", "tflite"), (".keras", "lce"),
                                             (".keras", "keras")])
def test_larq_trained_models_export(larq_model, tmp_path, suffix, fmt, capsys):
    """A model trained and saved by Larq exports with the config that describes it, and
    the export predicts what Larq's model predicts."""
    if fmt == "lce":
        pytest.importorskip("larq_compute_engine", reason="the optional larq-compute-engine "
                                                          "package is not installed")
    model, x, expected = larq_model
    saved = tmp_path / f"larq{suffix}"
    model.save(saved)
    report = export(saved, "--format", fmt, "--config", QUICKSTART, capsys=capsys)
    assert report["checkpoint"] is None
    from bnn_cli.deploy.runtimes import load

    actual = load(report["path"]).predict(x)
    assert (actual.argmax(-1) == expected.argmax(-1)).mean() == 1.0
    assert np.abs(actual - expected).max() < 1e-4
    assert report["top1_agreement"] == 1.0


def _digits_builder(tfds):
    """The digits as the runs here prepared them: in this session's private data_dir
    (TFDS read $TFDS_DATA_DIR when it was imported, maybe before conftest set it)."""
    return tfds.builder("sklearn_digits", data_dir=os.environ["TFDS_DATA_DIR"])
