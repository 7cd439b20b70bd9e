"""Model files from elsewhere: bnn reads only their weights, or an architecture it vetted.

Each attack is crafted here from a harmless model that a tiny quickstart run saved: its
stored JSON (a ``.keras`` zip's config.json, an HDF5 file's ``model_config``) is edited
with json/zipfile/h5py so that loading it would write a marker file (or name code that
could). ``test_the_payloads_are_real`` shows that plain Keras does run them; the other
tests show that ``bnn eval FILE --config`` and :func:`bnn_cli.assemble.vetting.load_vetted_model`
refuse each one, naming the layer and the reason, and that no marker appears. Harmless
files in both formats evaluate to the metrics of the run they came from.
"""

from __future__ import annotations

import json
import shutil
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
from conftest import QUICKSTART, train_tiny

from bnn_cli.assemble import vetting
from bnn_cli.cli import main
from bnn_cli.errors import UserError


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> SimpleNamespace:
    """A tiny quickstart run and its final model saved outside it as .keras and .h5."""
    from bnn_cli import models

    run = train_tiny(tmp_path_factory.mktemp("runs"))
    files = tmp_path_factory.mktemp("files")
    model = models.load_model(run / "model.keras", compile=False)  # (our own file: trusted)
    model.save(files / "model.keras")
    model.save(files / "model.h5")
    return SimpleNamespace(run=run, keras=files / "model.keras", h5=files / "model.h5",
                           weights=model.get_weights())


def _eval(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["eval", *args])
    out, err = capsys.readouterr()
    return code, out, err


# ---------------------------------------------------------------------------------------
# Crafting hostile files
# ---------------------------------------------------------------------------------------


def _edit_keras(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the .keras zip ``src`` whose config.json went through ``edit``."""
    with zipfile.ZipFile(src) as source, zipfile.ZipFile(dst, "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)
                edit(config)
                data = json.dumps(config).encode()
            target.writestr(item, data)
    return dst


def _edit_h5(src: Path, dst: Path, edit: Callable[[dict], None]) -> Path:
    """A copy of the HDF5 model ``src`` whose model_config went through ``edit``."""
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        config = json.loads(f.attrs["model_config"])
        edit(config)
        f.attrs["model_config"] = json.dumps(config)
    return dst


def _layers(config: dict) -> list[dict]:
    return config["config"]["layers"]


def _layer(config: dict, name: str) -> dict:
    return next(entry for entry in _layers(config) if entry["config"]["name"] == name)


def _write_file_layer(marker: Path) -> Callable[[dict], None]:
    """A TFOpLambda layer calling ``tf.io.write_file(marker, "pwned")`` on constants:
    Keras runs it while it rebuilds the model."""
    def edit(config: dict) -> None:
        _layers(config).insert(1, {
            "class_name": "TFOpLambda", "name": "tf.io.write_file",
            "config": {"name": "tf.io.write_file", "trainable": True, "dtype": "float32",
                       "function": "io.write_file"},
            "inbound_nodes": [["_CONSTANT_VALUE", -1, str(marker), {"contents": "pwned"}]]})
    return edit


# A function reference to os.system, carrying the registered name of a bnn component (the
# old check let a registered name through; Keras looks functions up by their own name).
OS_SYSTEM = {"module": "os", "class_name": "function", "config": "system",
             "registered_name": "bnn_cli>SteSign"}


def _disguised_lambda(marker: Path) -> Callable[[dict], None]:
    """A Lambda layer under the class_name of a bnn quantizer: the registered_name and
    module make Keras find Lambda, and its function is os.system on a constant."""
    def edit(config: dict) -> None:
        _layers(config).insert(1, {
            "module": "tf_keras.src.layers.core.lambda_layer", "class_name": "SteSign",
            "registered_name": "Lambda", "name": "innocent",
            "config": {"name": "innocent", "trainable": True, "dtype": "float32",
                       "function": OS_SYSTEM, "function_type": "function", "module": None,
                       "output_shape": None, "output_shape_type": "raw",
                       "output_shape_module": None, "arguments": {}},
            "inbound_nodes": [["_CONSTANT_VALUE", -1, f"touch {marker}", {}]]})
    return edit


def _os_system_activation(config: dict) -> None:
    _layer(config, "activation")["config"]["activation"] = OS_SYSTEM


def _subprocess_constraint(config: dict) -> None:
    _layer(config, "quant_conv2d")["config"]["kernel_constraint"] = {
        "module": "subprocess", "class_name": "Popen", "config": {"args": ["true"]},
        "registered_name": "bnn_cli>WeightClip"}


def _polyglot(trained, tmp: Path, marker: Path, suffix: str) -> Path:
    """HDF5 with the write_file layer, and the harmless .keras zip appended: zipfile
    reads the harmless zip (from the end), HDF5 and Keras's .h5 loader the payload."""
    hostile = _edit_h5(trained.h5, tmp / "payload.h5", _write_file_layer(marker))
    path = tmp / f"polyglot{suffix}"
    path.write_bytes(hostile.read_bytes() + trained.keras.read_bytes())
    assert zipfile.is_zipfile(path) and vetting.model_format(path) == "hdf5"
    return path


def _craft(case: str, trained, tmp: Path, marker: Path) -> Path:
    """The hostile file of ``case``."""
    if case == "write_file.keras":
        return _edit_keras(trained.keras, tmp / case, _write_file_layer(marker))
    if case == "write_file.h5":
        return _edit_h5(trained.h5, tmp / case, _write_file_layer(marker))
    if case == "disguised_lambda.keras":
        return _edit_keras(trained.keras, tmp / case, _disguised_lambda(marker))
    if case == "os_system.keras":
        return _edit_keras(trained.keras, tmp / case, _os_system_activation)
    if case == "subprocess.keras":
        return _edit_keras(trained.keras, tmp / case, _subprocess_constraint)
    return _polyglot(trained, tmp, marker, Path(case).suffix)


# case -> what the refusal says: the layer, then the reason
REFUSALS = {
    "write_file.keras": ("layer 'tf.io.write_file'", "is a TFOpLambda layer, which calls a "
                                                     "function that the file names"),
    "write_file.h5": ("layer 'tf.io.write_file'", "is a TFOpLambda layer"),
    "disguised_lambda.keras": ("layer 'innocent'", "is a Lambda layer (class_name 'SteSign')"),
    "os_system.keras": ("layer 'activation', its activation",
                        "refers to the Python function 'system' of the module 'os'"),
    "subprocess.keras": ("layer 'quant_conv2d', its kernel_constraint",
                         "names subprocess.Popen, which is neither a Keras layer"),
    "polyglot.h5": ("layer 'tf.io.write_file'", "is a TFOpLambda layer"),
    "polyglot.keras": ("layer 'tf.io.write_file'", "is a TFOpLambda layer"),
}
RUNS_CODE = ["write_file.keras", "write_file.h5", "disguised_lambda.keras", "polyglot.h5"]


@pytest.mark.parametrize("case", RUNS_CODE)
def test_the_payloads_are_real(case, trained, tmp_path):
    """Plain Keras (safe_mode on) writes the marker while it loads each of these files."""
    from bnn_cli._keras import keras

    marker = tmp_path / "marker"
    path = _craft(case, trained, tmp_path, marker)
    with pytest.raises(Exception):  # noqa: B017 - whatever breaks after the payload
        keras.models.load_model(path, safe_mode=True)
    assert marker.exists(), f"{case}: the crafted payload did not run"


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_eval_with_a_config_refuses_each_payload(case, trained, tmp_path, capsys):
    marker = tmp_path / "marker"
    path = _craft(case, trained, tmp_path, marker)
    code, out, err = _eval(capsys, str(path), "--config", str(QUICKSTART))
    layer, reason = REFUSALS[case]
    assert code == 2, err
    assert f"error: refusing the model file {path}: {layer} {reason}" in err
    assert "Traceback" not in err and out == ""
    assert not marker.exists()


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_the_vetted_loader_refuses_each_payload(case, trained, tmp_path):
    """Without a config (Python callers of load_vetted_model), nothing is loaded either."""
    marker = tmp_path / "marker"
    path = _craft(case, trained, tmp_path, marker)
    layer, reason = REFUSALS[case]
    with pytest.raises(UserError, match="refusing the model file") as refused:
        vetting.load_vetted_model(path)
    assert f"{path}: {layer} {reason}" in str(refused.value)
    assert not marker.exists()


def test_a_keras_saved_lambda_is_refused_in_both_formats(trained, tmp_path, capsys):
    """A real Python lambda saved by Keras (HDF5 files ignore Keras's safe_mode)."""
    from bnn_cli._keras import keras

    marker = tmp_path / "code-ran"
    where = str(marker)
    inputs = keras.Input((8, 8, 1))
    evil = keras.layers.Lambda(lambda t: (open(where, "w").write("x"), t)[1],  # noqa: SIM115
                               name="evil")(keras.layers.Flatten()(inputs))
    model = keras.Model(inputs, keras.layers.Dense(10, activation="softmax")(evil))
    for suffix in (".keras", ".h5"):
        path = tmp_path / f"lambda{suffix}"
        model.save(path)
        marker.unlink(missing_ok=True)
        code, _, err = _eval(capsys, str(path), "--config", str(QUICKSTART))
        assert code == 2, err
        assert "layer 'evil'" in err and "Lambda" in err and "Traceback" not in err
        assert not marker.exists(), f"{suffix}: the model's code ran"


def test_a_module_that_keras_would_import_is_refused(trained, tmp_path, capsys, monkeypatch):
    """Keras imports any module a .keras file names (running its top-level code)."""
    (tmp_path / "evil_module.py").write_text(
        f"open({str(tmp_path / 'code-ran')!r}, 'w').write('x')\nclass Dense: pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))

    def edit(config: dict) -> None:
        _layer(config, "quant_conv2d").update(module="evil_module", registered_name=None)

    path = _edit_keras(trained.keras, tmp_path / "bad.keras", edit)
    code, _, err = _eval(capsys, str(path), "--config", str(QUICKSTART))
    assert code == 2
    assert ("layer 'quant_conv2d' names the Python module 'evil_module', which Keras would "
            "import") in err
    assert not (tmp_path / "code-ran").exists()
    assert "evil_module" not in sys.modules


def test_a_file_that_cannot_be_vetted_is_refused(trained, tmp_path):
    """Fail closed: an error while vetting refuses the file (it does not pass it)."""
    with zipfile.ZipFile(trained.keras) as source, \
            zipfile.ZipFile(tmp_path / "broken.keras", "w") as target:
        for item in source.infolist():
            data = source.read(item.filename)
            target.writestr(item, b'{"class_name": ' if item.filename == "config.json" else data)
    with pytest.raises(UserError, match=r"broken.keras: it cannot be vetted \(JSONDecodeError"):
        vetting.vet_model_file(tmp_path / "broken.keras")


def test_a_registered_component_from_a_module_no_longer_loaded_is_allowed(trained, tmp_path):
    """A plugin's module is named anew in each process: an entry that names one that is
    not loaded passes when its registered name is what Keras resolves, and is refused
    when Keras would have to import the module."""
    def stale(registered: str | None) -> Callable[[dict], None]:
        def edit(config: dict) -> None:
            _layer(config, "quant_conv2d").update(module="bnn_plugin_gone_123",
                                                  registered_name=registered)
        return edit

    vetting.vet_model_file(_edit_keras(trained.keras, tmp_path / "ok.keras",
                                       stale("bnn_cli>QuantConv2D")))
    with pytest.raises(UserError, match="'bnn_plugin_gone_123', which Keras would import"):
        vetting.vet_model_file(_edit_keras(trained.keras, tmp_path / "no.keras", stale(None)))


def test_the_format_is_decided_by_the_bytes(trained, tmp_path):
    keras_as_h5 = tmp_path / "zip.h5"
    shutil.copyfile(trained.keras, keras_as_h5)
    with h5py.File(tmp_path / "userblock.keras", "w", userblock_size=1024) as f:
        f.create_dataset("x", data=[1])
    (tmp_path / "junk.h5").write_bytes(b"\x89HDF not really" * 100)
    assert vetting.model_format(trained.h5) == "hdf5"
    assert vetting.model_format(keras_as_h5) == "zip"
    assert vetting.model_format(tmp_path / "userblock.keras") == "hdf5"  # signature at 1024
    with pytest.raises(UserError, match="neither HDF5 .* nor a zip archive"):
        vetting.model_format(tmp_path / "junk.h5")


# ---------------------------------------------------------------------------------------
# Harmless files (controls)
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_a_harmless_model_file_gives_the_metrics_of_its_run(fmt, trained, capsys):
    code, out, err = _eval(capsys, str(trained.run), "--checkpoint", "last", "--json")
    assert code == 0, err
    run_metrics = json.loads(out)["metrics"]
    code, out, err = _eval(capsys, str(getattr(trained, fmt)), "--config", str(QUICKSTART),
                           "--json")
    assert code == 0, err
    assert json.loads(out)["metrics"] == pytest.approx(run_metrics, abs=1e-6)
    assert set(run_metrics) == {"loss", "accuracy"}


def test_the_model_file_inside_a_run_is_rebuilt_from_the_runs_config(trained, capsys):
    code, out, err = _eval(capsys, str(trained.run), "--checkpoint", "last", "--json")
    run_metrics = json.loads(out)["metrics"]
    code, out, err = _eval(capsys, str(trained.run / "model.keras"), "--json")
    assert code == 0, err
    assert json.loads(out)["metrics"] == pytest.approx(run_metrics, abs=1e-6)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_the_vetted_loader_loads_a_harmless_file(fmt, trained):
    model = vetting.load_vetted_model(getattr(trained, fmt))
    for got, want in zip(model.get_weights(), trained.weights, strict=True):
        np.testing.assert_array_equal(got, want)


def test_a_weights_only_file_evaluates_with_a_config(trained, tmp_path, capsys):
    """What the refusal advises for a trusted file: its weights alone, with a config."""
    model = vetting.load_vetted_model(trained.keras)
    model.save_weights(tmp_path / "weights.h5")
    code, out, err = _eval(capsys, str(tmp_path / "weights.h5"), "--config", str(QUICKSTART),
                           "--json")
    assert code == 0, err
    code, ref, _ = _eval(capsys, str(trained.keras), "--config", str(QUICKSTART), "--json")
    assert json.loads(out)["metrics"] == pytest.approx(json.loads(ref)["metrics"], abs=1e-6)


# ---------------------------------------------------------------------------------------
# Weights that do not fit the config's model
# ---------------------------------------------------------------------------------------


def _config(tmp_path: Path, old: str, new: str) -> Path:
    text = QUICKSTART.read_text()
    assert old in text
    path = tmp_path / "other.yaml"
    path.write_text(text.replace(old, new, 1))
    return path


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_a_weight_of_another_shape_names_the_layer(fmt, trained, tmp_path, capsys):
    config = _config(tmp_path, "{type: QuantConv2D, filters: 64, kernel_size: 3}",
                     "{type: QuantConv2D, filters: 32, kernel_size: 3}")
    code, _, err = _eval(capsys, str(getattr(trained, fmt)), "--config", str(config))
    assert code == 2, err
    assert "do not fit the config's model" in err
    assert ("layer 'quant_conv2d' (QuantConv2D): weight 0 has shape (3, 3, 1, 64) in the "
            "file but (3, 3, 1, 32) in the config's model") in err
    assert "Traceback" not in err


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_a_layer_the_file_lacks_is_named(fmt, trained, tmp_path, capsys):
    config = _config(tmp_path, "    - {type: Activation, activation: softmax}",
                     "    - {type: QuantDense, units: 10}\n"
                     "    - {type: Activation, activation: softmax}")
    code, _, err = _eval(capsys, str(getattr(trained, fmt)), "--config", str(config))
    assert code == 2, err
    assert "layer 'quant_dense_2' (QuantDense): the file has no weights for it" in err


def test_a_layer_deleted_from_the_file_is_named(trained, tmp_path, capsys):
    path = tmp_path / "cut.h5"
    shutil.copyfile(trained.h5, path)
    with h5py.File(path, "r+") as f:
        del f["model_weights/quant_dense_1"]
    code, _, err = _eval(capsys, str(path), "--config", str(QUICKSTART))
    assert code == 2, err
    assert "layer 'quant_dense_1' (QuantDense): the file has no weights for it" in err


def test_weights_for_a_layer_the_config_lacks_are_named(trained, tmp_path, capsys):
    config = _config(tmp_path, "    - {type: QuantDense, units: 256}\n"
                               "    - {type: BatchNormalization, momentum: 0.9, scale: false}\n",
                     "")
    code, _, err = _eval(capsys, str(trained.keras), "--config", str(config))
    assert code == 2, err
    assert "the file has weights for a layer (at layers/quant_dense_1) that the config's " \
           "model does not have" in err
