"""Constraints, activations, metrics and callbacks, mostly against Larq.

Larq objects are built from explicit Larq classes, never from strings. Larq is imported
first in the test session (conftest.py), so Keras's plain names are Larq's; where a test
asks Keras itself for bnn_cli's names, it does so inside bnn_cli's ``keras_scope``.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from bnn_cli import activations, constraints, layers, metrics, models, quantizers
from bnn_cli._keras import keras, tf
from bnn_cli.callbacks import HyperparameterScheduler
from bnn_cli.optimizers import Bop, CaseOptimizer
from bnn_cli.registry import REGISTRY, keras_scope

lq = pytest.importorskip(
    "larq", reason="Larq, the reference these tests compare with, is a test extra")

pytestmark = pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")

POINTS = np.array([-3.0, -1.5, -1.0, -0.999, -0.5, 0.0, 0.5, 0.999, 1.0, 1.5, 3.0], "float32")


def _round_trip(model: keras.Model, tmp_path, fmt: str) -> keras.Model:
    path = tmp_path / f"model.{fmt}"
    model.save(path)
    return models.load_model(path)


# ---------------------------------------------------------------------------------------
# Constraints.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("clip_value", [1, 0.5, 2.0])
def test_weight_clip_equals_larq(clip_value):
    w = tf.constant(np.random.default_rng(0).normal(scale=2, size=(6, 5)).astype("float32"))
    ours = constraints.WeightClip(clip_value)
    ref = lq.constraints.WeightClip(clip_value)
    np.testing.assert_array_equal(ours(w).numpy(), ref(w).numpy())
    assert ours.get_config() == ref.get_config() == {"clip_value": clip_value}


def test_weight_clip_names():
    with keras_scope():  # (this session imported Larq first: its plain names are Larq's)
        assert isinstance(keras.constraints.get("weight_clip"), constraints.WeightClip)
        assert type(keras.constraints.get("WeightClip")) is constraints.WeightClip
        clip = keras.constraints.get({"class_name": "WeightClip",
                                      "config": {"clip_value": 0.3}})
    assert clip.clip_value == 0.3
    entry = REGISTRY.get("constraint", "weight_clip")
    assert entry.obj is constraints.WeightClip and entry.name == "WeightClip"
    assert [(p.name, p.default) for p in entry.params] == [("clip_value", 1)]


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_weight_clip_survives_saving(tmp_path, fmt):
    inputs = keras.Input((4,))
    with keras_scope():
        x = keras.layers.Dense(3, kernel_constraint="weight_clip")(inputs)
    x = layers.QuantDense(2, kernel_quantizer="ste_sign",
                          kernel_constraint=constraints.WeightClip(0.5))(x)
    loaded = _round_trip(keras.Model(inputs, x), tmp_path, fmt)
    first, second = loaded.layers[1].kernel_constraint, loaded.layers[2].kernel_constraint
    assert isinstance(first, constraints.weight_clip) and first.clip_value == 1
    assert type(second) is constraints.WeightClip and second.clip_value == 0.5


@pytest.mark.parametrize("clip_value", [-1, 0, "1", None, True])
def test_weight_clip_bad_value(clip_value):
    with pytest.raises(ValueError, match="clip_value"):
        constraints.WeightClip(clip_value)


# ---------------------------------------------------------------------------------------
# Activations.
# ---------------------------------------------------------------------------------------


def _value_and_grad(fn, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = fn(x)
    return y.numpy(), tape.gradient(y, x).numpy()


@pytest.mark.parametrize(("ours", "ref"), [
    (activations.hard_tanh, lq.activations.hard_tanh),
    (activations.leaky_tanh, lq.activations.leaky_tanh),
    (activations.leaky_tanh.with_args(alpha=0.5), lambda x: lq.activations.leaky_tanh(x, 0.5)),
    (lambda x: activations.leaky_tanh(x, alpha=0.0), lambda x: lq.activations.leaky_tanh(x, 0)),
])
def test_activations_equal_larq(ours, ref):
    value, grad = _value_and_grad(ours, POINTS)
    ref_value, ref_grad = _value_and_grad(ref, POINTS)
    np.testing.assert_array_equal(value, ref_value)
    np.testing.assert_array_equal(grad, ref_grad)


def test_activation_names_resolve_to_bnn_cli():
    with keras_scope():
        assert keras.activations.get("hard_tanh") is activations.hard_tanh
        assert keras.activations.get("leaky_tanh") is activations.leaky_tanh
    entry = REGISTRY.get("activation", "leaky_tanh")
    assert entry.obj is activations.leaky_tanh.__wrapped__
    assert [(p.name, p.default) for p in entry.params] == [("alpha", 0.2)]
    assert entry.summary.startswith("Leaky tanh")
    assert activations.leaky_tanh.__name__ == "leaky_tanh"


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_activations_survive_saving(tmp_path, fmt):
    inputs = keras.Input((4,))
    with keras_scope():
        x = keras.layers.Dense(5, activation="hard_tanh")(inputs)
    x = layers.QuantDense(5, activation=activations.leaky_tanh)(x)
    x = keras.layers.Dense(3, activation=activations.leaky_tanh.with_args(alpha=0.5))(x)
    outputs = keras.layers.Activation(activations.leaky_tanh)(x)
    model = keras.Model(inputs, outputs)
    data = np.random.default_rng(1).normal(scale=3, size=(8, 4)).astype("float32")
    loaded = _round_trip(model, tmp_path, fmt)
    np.testing.assert_allclose(loaded.predict(data, verbose=0), model.predict(data, verbose=0))
    assert loaded.layers[3].activation.kwargs == {"alpha": 0.5}


def test_larq_style_activation_config_loads():
    # A model saved by Larq names its activations by plain strings.
    with keras_scope():
        layer = keras.layers.Dense.from_config({"units": 2, "activation": "leaky_tanh"})
    assert layer.activation is activations.leaky_tanh


def test_activation_bad_arguments():
    with pytest.raises(ValueError, match="takes argument"):
        activations.leaky_tanh.with_args(beta=1.0)
    with pytest.raises(ValueError, match="unknown activation"):
        activations.NamedActivation.from_config({"name": "hard_tan"})


def test_register_activation():
    @activations.register_activation(name="test_scaled_sign", replace=True)
    def scaled_sign(x, scale=2.0):
        """Sign times a scale."""
        return scale * tf.sign(x)

    assert keras.activations.get("test_scaled_sign") is scaled_sign
    config = keras.layers.Dense(2, activation=scaled_sign.with_args(scale=3.0)).get_config()
    restored = keras.layers.Dense.from_config(json.loads(json.dumps(config)))
    assert restored.activation(tf.constant([-1.0])).numpy().tolist() == [-3.0]
    with pytest.raises(Exception, match="already registered"):
        activations.register_activation(scaled_sign.__wrapped__, name="hard_tanh")


# ---------------------------------------------------------------------------------------
# Metrics.
# ---------------------------------------------------------------------------------------


def test_flip_ratio_docstring_example():
    m = metrics.FlipRatio()
    results = []
    for values in [(1, 1), (2, 2), (1, 2)]:
        m.update_state(values)
        results.append(float(m.result()))
    assert results == [0.0, 1.0, 0.75]


def test_flip_ratio_equals_larq():
    rng = np.random.default_rng(2)
    values = rng.choice([-1.0, 1.0], size=(7, 4, 5)).astype("float32")
    values[3] = values[2]  # a step without flips
    ours, ref = metrics.FlipRatio(), lq.metrics.FlipRatio()
    for step, v in enumerate(values):
        if step == 5:
            ours.reset_state()
            ref.reset_state()
        ours_result = ours(v)  # __call__: update then result, as in a quantizer
        ref_result = ref(v)
        np.testing.assert_allclose(ours_result.numpy(), ref_result.numpy(), rtol=1e-7)
    assert float(ours.result()) > 0
    assert ours.get_config() == ref.get_config()


def test_flip_ratio_config_and_errors():
    config = metrics.FlipRatio(values_dtype="int16", name="flips").get_config()
    assert config["values_dtype"] == "int16"
    assert metrics.FlipRatio.from_config(config).values_dtype == tf.int16
    with keras_scope():
        assert keras.utils.get_custom_objects()["flip_ratio"] is metrics.FlipRatio
    assert REGISTRY.get("metric", "flip_ratio").obj is metrics.FlipRatio
    with pytest.raises(ValueError, match="values_dtype"):
        metrics.FlipRatio(values_dtype="no_such_dtype")
    with pytest.raises(ValueError, match="fixed shape"):
        metrics.FlipRatio().build((None, 3))


def _flip_model(lib: str) -> keras.Model:
    if lib == "larq":
        dense, sign, clip = lq.layers.QuantDense, lq.quantizers.SteSign, lq.constraints.WeightClip
    else:
        dense, sign, clip = layers.QuantDense, quantizers.SteSign, constraints.WeightClip
    model = keras.Sequential([
        dense(4, kernel_quantizer=sign(metrics=["flip_ratio"]), kernel_constraint=clip(),
              input_shape=(3,), name="binary"),
    ])
    kernel = np.random.default_rng(3).uniform(-0.05, 0.05, size=(3, 4)).astype("float32")
    model.set_weights([kernel, np.zeros(4, "float32")])
    model.compile(optimizer=keras.optimizers.legacy.SGD(0.5), loss="mse")
    return model


def test_quantizer_flip_ratio_in_training_equals_larq():
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(16, 3)), rng.normal(size=(16, 4))
    logs = {}
    for lib in ("larq", "bnn"):
        history = _flip_model(lib).fit(x, y, batch_size=4, epochs=2, shuffle=False, verbose=0)
        (key,) = [k for k in history.history if k.startswith("flip_ratio")]
        logs[lib] = history.history[key]
    np.testing.assert_allclose(logs["bnn"], logs["larq"], rtol=1e-6)
    assert max(logs["bnn"]) > 0


def test_metrics_scope():
    assert metrics.get_training_metrics() == set()
    with metrics.metrics_scope(["flip_ratio"]) as scope:
        assert scope == {"flip_ratio"} == metrics.get_training_metrics()
        with metrics.metrics_scope():
            assert metrics.get_training_metrics() == {"flip_ratio"}
    assert metrics.get_training_metrics() == set()
    with pytest.raises(ValueError, match="unknown training metric"), metrics.metrics_scope(
            ["accuracy"]):
        pass


# ---------------------------------------------------------------------------------------
# Callbacks.
# ---------------------------------------------------------------------------------------


def _scheduled_model(lib: str) -> tuple[keras.Model, object, object]:
    """A binary dense model with Bop + legacy Adam; returns (model, bop, adam)."""
    if lib == "larq":
        dense, binary = lq.layers.QuantDense, lq.quantizers.NoOp(precision=1)
        bop, case = lq.optimizers.Bop(threshold=1e-4, gamma=0.5), lq.optimizers.CaseOptimizer
    else:
        dense, binary = layers.QuantDense, quantizers.NoOp(precision=1)
        bop, case = Bop(threshold=1e-4, gamma=0.5), CaseOptimizer
    adam = keras.optimizers.legacy.Adam(0.01)
    model = keras.Sequential([dense(4, kernel_quantizer=binary, input_shape=(3,), name="b")])
    kernel = np.where(np.random.default_rng(5).normal(size=(3, 4)) > 0, 1.0, -1.0)
    model.set_weights([kernel.astype("float32"), np.zeros(4, "float32")])
    model.compile(optimizer=case((bop.is_binary_variable, bop), default_optimizer=adam),
                  loss="mse")
    return model, bop, adam


def test_hyperparameter_scheduler_equals_larq():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(8, 3)), rng.normal(size=(8, 4))
    results = {}
    for lib, scheduler in (("larq", lq.callbacks.HyperparameterScheduler),
                           ("bnn", HyperparameterScheduler)):
        model, bop, adam = _scheduled_model(lib)
        callbacks = [
            scheduler(lambda epoch: 0.5 * 0.1**epoch, "gamma", bop),
            scheduler(lambda step, lr: lr * 0.5, "learning_rate", adam, update_freq="step",
                      log_name="adam_lr"),
        ]
        history = model.fit(x, y, batch_size=4, epochs=3, shuffle=False, verbose=0,
                            callbacks=callbacks)
        results[lib] = (history.history, model.get_weights())
    (ours, ours_weights), (ref, ref_weights) = results["bnn"], results["larq"]
    np.testing.assert_allclose(ours["gamma"], ref["gamma"], rtol=1e-6)
    np.testing.assert_allclose(ours["adam_lr"], ref["adam_lr"], rtol=1e-6)
    np.testing.assert_allclose(ours["gamma"], [0.5, 0.05, 0.005], rtol=1e-6)
    np.testing.assert_allclose(ours["adam_lr"][-1], 0.01 * 0.5**6, rtol=1e-6)
    for w, w_ref in zip(ours_weights, ref_weights, strict=True):
        np.testing.assert_allclose(w, w_ref, rtol=1e-5, atol=1e-7)


def test_hyperparameter_scheduler_uses_model_optimizer(capsys):
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(2,))])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    callback = HyperparameterScheduler(lambda epoch: 0.1 / (epoch + 1), "learning_rate",
                                       verbose=1)
    model.fit(np.ones((4, 2)), np.ones((4, 1)), epochs=2, verbose=0, callbacks=[callback])
    assert callback.optimizer is model.optimizer
    assert float(model.optimizer.learning_rate.numpy()) == pytest.approx(0.05)
    assert "Epoch 1: learning_rate is now 0.05" in capsys.readouterr().out


def test_hyperparameter_scheduler_errors():
    with pytest.raises(ValueError, match="update_freq"):
        HyperparameterScheduler(lambda t: 1.0, "gamma", Bop(), update_freq="batch")
    with pytest.raises(TypeError, match="callable"):
        HyperparameterScheduler(0.1, "gamma", Bop())
    model = keras.Sequential([keras.layers.Dense(1, input_shape=(2,))])
    for optimizer, name in ((Bop(), "learning_rate"), (keras.optimizers.Adam(), "gamma")):
        callback = HyperparameterScheduler(lambda t: 1.0, name, optimizer)
        with pytest.raises(ValueError, match=f"no '{name}' attribute"):
            callback.set_model(model)
    assert REGISTRY.get("callback", "HyperparameterScheduler").obj is HyperparameterScheduler
