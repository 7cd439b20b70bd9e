"""Bop and CaseOptimizer: differential tests against Larq, training, saving, errors.

Larq objects are built from explicit Larq classes, never from strings (bnn_cli owns the
plain names in Keras's custom objects during the test session; see conftest.py).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from bnn_cli import layers, models, optimizers, quantizers
from bnn_cli._keras import keras, tf
from bnn_cli.optimizers import Bop, CaseOptimizer
from bnn_cli.registry import REGISTRY, keras_scope

lq = pytest.importorskip(
    "larq", reason="Larq, the reference these tests compare with, is a test extra")

# ---------------------------------------------------------------------------------------
# Helpers.
# ---------------------------------------------------------------------------------------


def _binary_init(shape, seed: int, zeros: bool = False) -> np.ndarray:
    rng = np.random.default_rng(seed)
    values = rng.choice([-1.0, 1.0], size=shape).astype("float32")
    if zeros:
        values.flat[::7] = 0.0  # sign(0) = +1 must resolve as in Larq
    return values


def _build(lib: str) -> keras.Model:
    """A small BNN: float dense + batch norm, then two binary dense layers (Bop's)."""
    if lib == "larq":
        dense, sign = lq.layers.QuantDense, lq.quantizers.SteSign
        def binary():
            return lq.quantizers.NoOp(precision=1)
    else:
        dense, sign = layers.QuantDense, quantizers.SteSign
        def binary():
            return quantizers.NoOp(precision=1)
    inputs = keras.Input((6,))
    # No bias before batch norm: its true gradient is 0, and Adam would amplify the
    # rounding noise that stands for it into steps of full size.
    x = keras.layers.Dense(8, use_bias=False, name="fp")(inputs)
    x = keras.layers.BatchNormalization(name="bn1")(x)
    x = dense(8, input_quantizer=sign(), kernel_quantizer=binary(), use_bias=False,
              name="b1")(x)
    x = keras.layers.BatchNormalization(name="bn2")(x)
    x = dense(3, input_quantizer=sign(), kernel_quantizer=binary(), name="b2")(x)
    return keras.Model(inputs, x)


def _pair(seed: int = 0) -> tuple[keras.Model, keras.Model]:
    """The same model, same weights, built with Larq's layers and with bnn_cli's."""
    ref, ours = _build("larq"), _build("bnn")
    weights = ours.get_weights()
    rng = np.random.default_rng(seed)
    for i, w in enumerate(ours.weights):
        if getattr(w, "precision", 32) == 1:
            weights[i] = _binary_init(w.shape, seed + i)
        elif "kernel" in w.name:
            weights[i] = rng.normal(size=w.shape).astype("float32")
    ref.set_weights(weights)
    ours.set_weights(weights)
    return ref, ours


def _data(n: int = 32, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, 6)).astype("float32"),
            rng.normal(size=(n, 3)).astype("float32"))


def _binary_mask(model: keras.Model) -> list[bool]:
    return [getattr(w, "precision", 32) == 1 for w in model.weights]


def _assert_same_weights(ref: keras.Model, ours: keras.Model, rtol: float = 1e-5) -> None:
    for w_ref, w_ours, binary in zip(ref.get_weights(), ours.get_weights(),
                                     _binary_mask(ours), strict=True):
        if binary:
            np.testing.assert_array_equal(w_ours, w_ref)
        else:
            np.testing.assert_allclose(w_ours, w_ref, rtol=rtol, atol=1e-6)


def _case(adam: keras.optimizers.Optimizer, **bop_args) -> CaseOptimizer:
    bop_args = {"threshold": 1e-5, "gamma": 0.1, **bop_args}
    return CaseOptimizer((Bop.is_binary_variable, Bop(**bop_args)), default_optimizer=adam)


def _larq_case() -> lq.optimizers.CaseOptimizer:
    return lq.optimizers.CaseOptimizer(
        (lq.optimizers.Bop.is_binary_variable, lq.optimizers.Bop(threshold=1e-5, gamma=0.1)),
        default_optimizer=keras.optimizers.legacy.Adam(0.01),
    )


# ---------------------------------------------------------------------------------------
# Bop against Larq's Bop.
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("threshold", "gamma"), [(1e-8, 1e-4), (1e-3, 0.5), (0.0, 1.0)])
def test_bop_steps_equal_larq(threshold, gamma):
    init = _binary_init((5, 4), seed=3, zeros=True)
    ours, ref = tf.Variable(init), tf.Variable(init)
    bop = Bop(threshold=threshold, gamma=gamma)
    larq_bop = lq.optimizers.Bop(threshold=threshold, gamma=gamma)
    rng = np.random.default_rng(4)
    flips = 0
    for _ in range(6):
        grad = tf.constant(rng.normal(scale=0.05, size=init.shape).astype("float32"))
        before = ours.numpy()
        bop.apply_gradients([(grad, ours)])
        larq_bop.apply_gradients([(grad, ref)])
        np.testing.assert_array_equal(ours.numpy(), ref.numpy())
        np.testing.assert_array_equal(bop._momentums[0].numpy(),
                                      larq_bop.get_slot(ref, "m").numpy())
        flips += int(np.sum(before != ours.numpy()))
    assert set(np.unique(ours.numpy())) <= {-1.0, 1.0}
    assert flips > 0


def test_bop_xla_update_equals_larq():
    # On a GPU Keras compiles update steps with XLA; force that path on the CPU.
    bop = Bop(threshold=1e-3, gamma=0.5)
    bop.jit_compile = True
    larq_bop = lq.optimizers.Bop(threshold=1e-3, gamma=0.5)
    init = _binary_init((5, 4), seed=8)
    ours, ref = tf.Variable(init), tf.Variable(init)
    rng = np.random.default_rng(9)
    for _ in range(4):
        grad = tf.constant(rng.normal(scale=0.05, size=init.shape).astype("float32"))
        bop.apply_gradients([(grad, ours)])
        larq_bop.apply_gradients([(grad, ref)])
        np.testing.assert_array_equal(ours.numpy(), ref.numpy())
    assert not np.array_equal(ours.numpy(), init)


def test_bop_schedules_equal_larq():
    def schedules():
        return (keras.optimizers.schedules.ExponentialDecay(0.5, 1, 0.5),
                keras.optimizers.schedules.PiecewiseConstantDecay([2], [1e-3, 1e-2]))

    gamma, threshold = schedules()
    bop = Bop(threshold=threshold, gamma=gamma)
    gamma, threshold = schedules()
    larq_bop = lq.optimizers.Bop(threshold=threshold, gamma=gamma)
    init = _binary_init((16,), seed=5)
    ours, ref = tf.Variable(init), tf.Variable(init)
    rng = np.random.default_rng(6)
    for _ in range(5):
        grad = tf.constant(rng.normal(scale=0.1, size=init.shape).astype("float32"))
        bop.apply_gradients([(grad, ours)])
        larq_bop.apply_gradients([(grad, ref)])
        np.testing.assert_array_equal(ours.numpy(), ref.numpy())


def test_bop_config_round_trip():
    bop = Bop(threshold=1e-6, gamma=keras.optimizers.schedules.ExponentialDecay(1e-3, 10, 0.9))
    config = bop.get_config()
    again = Bop.from_config(config)
    assert again.get_config() == config
    assert float(Bop.from_config(Bop(gamma=0.25).get_config()).gamma.numpy()) == 0.25


def test_bop_reads_larq_config():
    config = lq.optimizers.Bop(threshold=1e-6, gamma=1e-3).get_config()
    bop = Bop.from_config(config)
    assert bop.threshold.numpy() == pytest.approx(1e-6)
    assert bop.gamma.numpy() == pytest.approx(1e-3)


def test_bop_hyperparameters_are_settable_variables():
    bop = Bop()
    bop.gamma = 0.5
    keras.backend.set_value(bop.threshold, 0.25)
    assert (bop.gamma.numpy(), bop.threshold.numpy()) == (0.5, 0.25)


def test_bop_is_binary_variable():
    layer = layers.QuantDense(3, kernel_quantizer="ste_sign", kernel_constraint="weight_clip")
    layer.build((None, 4))
    plain = keras.layers.Dense(3)
    plain.build((None, 4))
    assert Bop.is_binary_variable(layer.kernel)
    assert not Bop.is_binary_variable(layer.bias)
    assert not Bop.is_binary_variable(plain.kernel)
    assert Bop.is_binary_variable is optimizers.Bop.is_binary_variable


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"weight_decay": 0.1}, "weight_decay"),
    ({"gamma": -1.0}, "gamma"),
    ({"threshold": "big"}, "threshold"),
])
def test_bop_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Bop(**kwargs)


# ---------------------------------------------------------------------------------------
# CaseOptimizer against Larq's, on the same model.
# ---------------------------------------------------------------------------------------


def _train_steps(model: keras.Model, optimizer, x: np.ndarray, y: np.ndarray, steps: int):
    for step in range(steps):
        batch = slice(8 * step, 8 * step + 8)
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(x[batch], training=True) - y[batch]))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
        yield step


def test_case_optimizer_steps_equal_larq():
    ref, ours = _pair(seed=10)
    x, y = _data()
    start = ours.get_weights()
    ref_steps = _train_steps(ref, _larq_case(), x, y, 4)
    ours_steps = _train_steps(ours, _case(keras.optimizers.legacy.Adam(0.01)), x, y, 4)
    for _ in zip(ref_steps, ours_steps, strict=True):
        _assert_same_weights(ref, ours)
    flipped = [np.sum(a != b) for a, b, binary in
               zip(start, ours.get_weights(), _binary_mask(ours), strict=True) if binary]
    assert sum(flipped) > 0  # Bop did flip weights, so the comparison means something


def test_case_optimizer_fit_equals_larq_with_current_adam():
    """model.fit with keras.optimizers.Adam (not legacy) matches Larq's legacy Adam."""
    ref, ours = _pair(seed=20)
    x, y = _data()
    ref.compile(optimizer=_larq_case(), loss="mse")
    ours.compile(optimizer=_case(keras.optimizers.Adam(0.01)), loss="mse")
    ref.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    ours.fit(x, y, batch_size=8, epochs=2, shuffle=False, verbose=0)
    _assert_same_weights(ref, ours, rtol=1e-4)
    bop, adam = ours.optimizer.optimizers
    assert int(ours.optimizer.iterations.numpy()) == 8
    assert int(bop.iterations.numpy()) == int(adam.iterations.numpy()) == 8


# ---------------------------------------------------------------------------------------
# Saving and loading.
# ---------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize("fmt", ["keras", "h5"])
@pytest.mark.parametrize("adam", [keras.optimizers.Adam, keras.optimizers.legacy.Adam])
def test_case_optimizer_trains_saves_and_resumes(tmp_path, fmt, adam):
    _, model = _pair(seed=30)
    x, y = _data()
    model.compile(optimizer=_case(adam(0.01)), loss="mse")
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    path = tmp_path / f"model.{fmt}"
    model.save(path)
    loaded = models.load_model(path)

    assert isinstance(loaded.optimizer, CaseOptimizer)
    assert [type(o) for o in loaded.optimizer.optimizers] == [Bop, adam]
    np.testing.assert_allclose(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    for saved, restored in zip(model.optimizer.variables, loaded.optimizer.variables,
                               strict=True):
        np.testing.assert_array_equal(restored.numpy(), saved.numpy())
    # Resuming from the file continues exactly as the original does.
    model.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    loaded.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0)
    _assert_same_weights(model, loaded, rtol=1e-6)
    assert [int(o.iterations.numpy()) for o in loaded.optimizer.optimizers] == [8, 8]


def test_case_optimizer_config_round_trip():
    _, model = _pair()
    case = _case(keras.optimizers.Adam(0.01))
    case.build(model.trainable_variables)
    config = case.get_config()
    assert config["predicates"] == ["bnn_cli>is_binary_variable"]
    assert sum(i == 0 for i in config["var_opt_assignment"]) == 2  # the two binary kernels
    again = CaseOptimizer.from_config(config)
    assert again.pred_opt_pairs[0][0] is Bop.is_binary_variable
    again_config = again.get_config()
    for key in ("name", "predicates", "var_opt_mapping", "var_opt_assignment"):
        assert again_config[key] == config[key]
    assert [c["config"] for c in again_config["optimizer_configs"]] == [
        c["config"] for c in config["optimizer_configs"]]
    assert again_config["default_config"]["config"] == config["default_config"]["config"]
    # The saved assignment is reused, by the order of the variables.
    _, other = _pair()
    again.build(other.trainable_variables)
    assert again.get_config()["var_opt_assignment"] == config["var_opt_assignment"]


def test_case_optimizer_unbuilt_config_uses_registered_predicate():
    config = _case(keras.optimizers.Adam()).get_config()
    assert config["var_opt_assignment"] is None
    _, model = _pair()
    case = CaseOptimizer.from_config(config)
    case.build(model.trainable_variables)
    assert case.get_config()["var_opt_assignment"].count(0) == 2


def test_case_optimizer_reads_larq_config():
    ref, _ = _pair()
    larq_case = _larq_case()
    x, y = _data()
    list(_train_steps(ref, larq_case, x, y, 1))
    case = CaseOptimizer.from_config(larq_case.get_config())
    bop, adam = case.optimizers
    assert isinstance(bop, Bop) and bop.gamma.numpy() == pytest.approx(0.1)
    assert isinstance(adam, keras.optimizers.legacy.Adam)
    # Larq saves neither predicates nor a usable assignment: say so instead of silently
    # leaving the binary weights untrained.
    _, model = _pair()
    with pytest.raises(ValueError, match="register the predicate"):
        case.build(model.trainable_variables)


# ---------------------------------------------------------------------------------------
# Errors and warnings.
# ---------------------------------------------------------------------------------------


def test_case_optimizer_bad_arguments():
    with pytest.raises(ValueError, match="at least one"):
        CaseOptimizer(default_optimizer=keras.optimizers.Adam())
    with pytest.raises(TypeError, match="predicate must be callable"):
        CaseOptimizer((1, Bop()))
    with pytest.raises(TypeError, match="expected a Keras optimizer"):
        CaseOptimizer((Bop.is_binary_variable, "adam"))
    with pytest.raises(TypeError, match=r"\(predicate, optimizer\) pair"):
        CaseOptimizer(Bop())
    with pytest.raises(TypeError, match="default_optimizer"):
        CaseOptimizer((Bop.is_binary_variable, Bop()), default_optimizer="adam")


def test_case_optimizer_claims():
    _, model = _pair()
    variables = model.trainable_variables
    twice = CaseOptimizer((lambda v: True, Bop()), (lambda v: True, keras.optimizers.SGD()))
    with pytest.raises(ValueError, match="more than one optimizer"):
        twice.build(variables)
    idle = CaseOptimizer((lambda v: False, Bop()), default_optimizer=keras.optimizers.SGD())
    with pytest.raises(ValueError, match="did not claim any variables"):
        idle.build(variables)
    no_default = CaseOptimizer((Bop.is_binary_variable, Bop()))
    with pytest.warns(UserWarning, match="no optimizer trains variable"):
        no_default.build(variables)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _case(keras.optimizers.SGD()).build(variables)


def test_registry_entries():
    bop = REGISTRY.get("optimizer", "Bop")
    assert bop.obj is Bop and bop.builtin
    assert [(p.name, p.default) for p in bop.params] == [
        ("threshold", 1e-8), ("gamma", 1e-4), ("name", "Bop")]
    case = REGISTRY.get("optimizer", "CaseOptimizer")
    assert [p.name for p in case.params] == ["default_optimizer", "name"]
    with keras_scope():
        assert keras.utils.get_custom_objects()["Bop"] is Bop
