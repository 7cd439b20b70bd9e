"""The Larq zoo configs (configs/zoo/) and the components they need.

Every config must build the zoo's own network: `bnn check` gives exactly the figures
of the zoo's Keras model (tests/data/zoo_reference.json, a copy of
../shared/zoo/reference.json, built with larq-zoo 2.4.0). The new quantizers are
compared with the Larq zoo's definitions, written here with Larq's primitives.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from bnn_cli import quantizers, zoo
from bnn_cli._keras import keras, tf
from bnn_cli.assemble.report import check_config
from bnn_cli.cli import main

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "data" / "zoo_reference.json"
SHARED_REFERENCE = ROOT.parent / "shared" / "zoo" / "reference.json"

_spec = importlib.util.spec_from_file_location("zoo_table", ROOT / "scripts" / "zoo_table.py")
zoo_table = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(zoo_table)

FIGURES = ("count_params", "trainable", "non_trainable", "summary_params_by_bitwidth",
           "macs_by_precision", "memory_bits", "input_shape", "output_shape")
"""reference.json's keys that a transcription must match (not ``num_layers``)."""


def reference() -> dict:
    return json.loads(REFERENCE.read_text())


def zoo_config(name: str) -> Path:
    return ROOT / "configs" / "zoo" / zoo_table.ZOO_CONFIGS[name]


# ---------------------------------------------------------------------------------------
# The configs
# ---------------------------------------------------------------------------------------


def test_one_config_per_zoo_model():
    assert list(zoo_table.ZOO_CONFIGS) == list(reference())
    assert sorted(p.name for p in (ROOT / "configs" / "zoo").glob("*.yaml")) == \
        sorted(zoo_table.ZOO_CONFIGS.values())


@pytest.mark.skipif(not SHARED_REFERENCE.is_file(), reason="../shared/zoo is absent")
def test_reference_copy_is_the_shared_file():
    assert json.loads(SHARED_REFERENCE.read_text()) == reference()


@pytest.mark.parametrize("name", list(zoo_table.ZOO_CONFIGS))
def test_config_has_the_zoo_models_figures(name):
    report = check_config(zoo_config(name), [])
    figures = report.summary.reference_figures()
    expected = reference()[name]
    assert {k: figures[k] for k in FIGURES} == {k: expected[k] for k in FIGURES}
    # The ImageNet data is not prepared here: the model is checked, the data is not.
    assert report.as_dict()["data_checked"] is False


def test_input_shape_and_classes_are_overridable(capsys):
    args = ["check", str(zoo_config("QuickNet")), "model.inputs[0].shape=[32,32,3]",
            "model.layers[-1].classes=10", "--json"]
    assert main(args) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["input_shape"] == [32, 32, 3] and out["output_shape"] == [10]
    assert out["data_checked"] is False and "not prepared" in out["data_warning"]


def test_classes_of_a_convolutional_classifier_are_overridable():
    """Binary AlexNet's classifier is a 1x1 convolution: the block param reaches it."""
    report = check_config(zoo_config("BinaryAlexNet"), ["model.layers[-1].classes=10",
                                                        "model.inputs[0].shape=[96,96,3]"])
    assert report.summary.output_shape == [10]


def test_check_warns_that_the_data_was_not_checked(capsys):
    assert main(["check", str(zoo_config("BinaryAlexNet"))]) == 0
    out = capsys.readouterr().out
    assert "warning: the data section was NOT checked" in out and "imagenet2012" in out


def test_train_still_refuses_an_unprepared_dataset(tmp_path, capsys):
    code = main(["train", str(zoo_config("QuickNetSmall")), "--output", str(tmp_path)])
    assert code == 2
    assert "is not prepared" in capsys.readouterr().err
    assert not [p for p in tmp_path.iterdir() if not p.name.startswith(".")]


def test_check_needs_the_data_where_it_gives_the_input_shape(capsys):
    """Without model.inputs the input shape comes from the data: still an error."""
    quickstart = ROOT / "configs" / "quickstart.yaml"
    assert main(["check", str(quickstart), "data.dataset=imagenet2012"]) == 2
    assert "is not prepared" in capsys.readouterr().err


def test_unknown_dataset_is_still_an_error_for_check(capsys):
    code = main(["check", str(zoo_config("QuickNetSmall")), "data.dataset=imagenet2013"])
    assert code == 2
    assert "unknown dataset" in capsys.readouterr().err


@pytest.mark.parametrize(("name", "side"), [("MeliusNet22", 64), ("QuickNetSmall", 32),
                                          ("DoReFaNet", 64)])
def test_zoo_model_saves_and_loads(name, side, tmp_path):
    """The new components serialize: a saved model loads with the same outputs."""
    from bnn_cli.assemble.check import check
    from bnn_cli.assemble.model import build_model
    from bnn_cli.models import load_model

    checked = check(zoo_config(name), [f"model.inputs[0].shape=[{side},{side},3]",
                                       "model.layers[-1].classes=10"],
                    allow_unprepared_data=True)
    model = build_model(checked)
    x = np.random.default_rng(0).uniform(size=(2, side, side, 3)).astype("float32")
    model.save(tmp_path / "model.keras")
    again = load_model(tmp_path / "model.keras")
    np.testing.assert_allclose(again(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-7)


def test_readme_table_is_the_generated_one():
    assert zoo_table.table(reference()) in (ROOT / "README.md").read_text()


# ---------------------------------------------------------------------------------------
# The components
# ---------------------------------------------------------------------------------------

@pytest.fixture
def lq():
    return pytest.importorskip("larq", reason="Larq, the reference oracle, is a test extra")


def _value_and_grad(fn, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``fn(x)`` and the gradient of ``sum(fn(x) * w)`` for fixed random ``w``."""
    x = tf.constant(x)
    w = tf.constant(np.random.default_rng(1).normal(size=x.shape).astype("float32"))
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
        loss = tf.reduce_sum(y * w)
    return y.numpy(), tape.gradient(loss, x).numpy()


def _kernel(shape=(3, 3, 4, 5), scale=1.5) -> np.ndarray:
    x = np.random.default_rng(0).uniform(-scale, scale, size=shape).astype("float32")
    x.flat[:3] = [0.0, 1.0, -1.0]  # the sign's and the clip's boundaries
    return x


def _zoo_xnor_weight_scale(lq, x):
    """The Larq zoo's definition (larq_zoo.literature.xnornet), with Larq's sign."""
    x = tf.clip_by_value(x, -1, 1)
    alpha = tf.reduce_mean(tf.abs(x), axis=[0, 1, 2], keepdims=True)
    return alpha * lq.quantizers.ste_sign(x)


def _zoo_magnitude_aware_sign_unclipped(lq, x):
    """The Larq zoo's definition (larq_zoo.literature.dorefanet), with Larq's sign."""
    scale_factor = tf.stop_gradient(tf.reduce_mean(tf.abs(x)))

    @tf.custom_gradient
    def _sign(x):
        return lq.math.sign(x) * scale_factor, lambda dy: dy

    return _sign(x)


@pytest.mark.parametrize(("name", "oracle"), [
    ("xnor_weight_scale", _zoo_xnor_weight_scale),
    ("magnitude_aware_sign_unclipped", _zoo_magnitude_aware_sign_unclipped),
])
def test_zoo_weight_quantizers_match_the_zoo(lq, name, oracle):
    quantizer = quantizers.get(name)
    assert quantizer.precision == 1
    y, dy = _value_and_grad(quantizer, _kernel())
    y_ref, dy_ref = _value_and_grad(lambda t: oracle(lq, t), _kernel())
    np.testing.assert_allclose(y, y_ref, rtol=1e-6)
    np.testing.assert_allclose(dy, dy_ref, rtol=1e-5, atol=1e-7)


def test_xnor_weight_scale_formula():
    """Forward: one scale per filter, the mean |clip(x)|; no gradient outside [-1, 1]."""
    x = _kernel()
    y, dy = _value_and_grad(quantizers.XnorWeightScale(), x)
    alpha = np.abs(np.clip(x, -1, 1)).mean(axis=(0, 1, 2))
    np.testing.assert_allclose(y, np.where(x < 0, -1.0, 1.0) * alpha, rtol=1e-6)
    assert np.all(dy[np.abs(x) > 1] == 0)


def test_magnitude_aware_sign_unclipped_formula():
    """Forward: one scale for the whole tensor; the pseudo-gradient is the identity."""
    x = _kernel()
    y, dy = _value_and_grad(quantizers.MagnitudeAwareSignUnclipped(), x)
    np.testing.assert_allclose(y, np.where(x < 0, -1.0, 1.0) * np.abs(x).mean(), rtol=1e-6)
    w = np.random.default_rng(1).normal(size=x.shape).astype("float32")
    np.testing.assert_allclose(dy, w)  # d(sum(q(x) * w))/dx = w


def test_dorefa_activations_as_dorefanet_uses_them(lq):
    x = np.linspace(-0.5, 1.5, 41, dtype="float32")
    ours = _value_and_grad(quantizers.DoReFa(k_bit=2, mode="activations"), x)
    larqs = _value_and_grad(lq.quantizers.DoReFa(k_bit=2, mode="activations"), x)
    for a, b in zip(ours, larqs, strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize("cls", [quantizers.XnorWeightScale,
                                 quantizers.MagnitudeAwareSignUnclipped])
def test_zoo_quantizers_serialize(cls):
    again = quantizers.deserialize(quantizers.serialize(cls()))
    assert type(again) is cls
    x = tf.constant(_kernel())
    np.testing.assert_array_equal(again(x), cls()(x))


def test_blurpool_is_a_normalized_binomial_filter():
    kernel = zoo.BlurPool()((3, 3, 2, 1)).numpy()
    expected = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]]) / 16
    for c in range(2):
        np.testing.assert_allclose(kernel[:, :, c, 0], expected)
    assert zoo.BlurPool()((5, 5, 1, 1)).numpy().sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="size 2, 3 or 5"):
        zoo.BlurPool()((4, 4, 1, 1))


def test_blurpool_by_name_in_a_frozen_depthwise_convolution():
    layer = keras.layers.DepthwiseConv2D(3, padding="same", use_bias=False,
                                         depthwise_initializer="blurpool", trainable=False)
    y = layer(tf.ones((1, 6, 6, 2))).numpy()
    np.testing.assert_allclose(y[0, 1:-1, 1:-1], 1.0, rtol=1e-6)  # a blur keeps constants
    assert layer.trainable_weights == []


def test_add_to_last_channels():
    x = np.arange(2 * 2 * 2 * 5, dtype="float32").reshape(2, 2, 2, 5)
    w = np.full((2, 2, 2, 2), 100.0, dtype="float32")
    layer = zoo.AddToLastChannels()
    y = layer([tf.constant(x), tf.constant(w)]).numpy()
    np.testing.assert_array_equal(y[..., :3], x[..., :3])
    np.testing.assert_array_equal(y[..., 3:], x[..., 3:] + 100)
    assert layer.weights == []
    again = zoo.AddToLastChannels.from_config(layer.get_config())
    assert again.name == layer.name
    with pytest.raises(ValueError, match="more than"):
        zoo.AddToLastChannels()([tf.constant(w), tf.constant(x)])


def test_learnable_bias_shifts_each_channel_and_learns(tmp_path):
    from bnn_cli._keras import keras

    x = np.random.default_rng(0).normal(size=(4, 3, 3, 5)).astype("float32")
    layer = zoo.LearnableBias()
    np.testing.assert_array_equal(layer(x).numpy(), x)  # zeros at the start: identity
    layer.bias.assign(np.arange(5, dtype="float32"))
    np.testing.assert_array_equal(layer(x).numpy(), x + np.arange(5, dtype="float32"))
    # One bias per channel, trained by the gradient of whatever follows.
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(x) * np.arange(5, dtype="float32"))
    np.testing.assert_allclose(tape.gradient(loss, layer.bias).numpy(),
                               4 * 3 * 3 * np.arange(5))
    # Saved and loaded by name, with its initializer.
    model = keras.Sequential([keras.Input((3, 3, 5)),
                              zoo.LearnableBias(bias_initializer="ones")])
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    np.testing.assert_array_equal(again(x).numpy(), x + 1)
    with pytest.raises(ValueError, match="known number of channels"):
        zoo.LearnableBias().build(tf.TensorShape([None, None]))


def test_zoo_components_are_registered():
    from bnn_cli.registry import REGISTRY

    assert REGISTRY.find("layer", "AddToLastChannels").obj is zoo.AddToLastChannels
    assert REGISTRY.find("layer", "LearnableBias").obj is zoo.LearnableBias
    assert REGISTRY.find("initializer", "blurpool").obj is zoo.BlurPool
    for name in ("xnor_weight_scale", "magnitude_aware_sign_unclipped"):
        assert REGISTRY.find("quantizer", name).precision == 1
