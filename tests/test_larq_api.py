"""Larq's whole public API: every public name of Larq 0.14 has a counterpart in the
same-named bnn_cli module, and the counterparts of ``larq.context``, ``larq.utils``,
``larq.quantized_variable`` and Larq's layer base classes behave as Larq's (Larq, a
test-only oracle, runs side by side with the same inputs and weights).
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import threading
import uuid

import numpy as np
import pytest

import bnn_cli.context as bcontext
import bnn_cli.quantized_variable as bqv
import bnn_cli.utils as butils
from bnn_cli import layers as blayers
from bnn_cli import metrics as bmetrics
from bnn_cli import models as bmodels
from bnn_cli import quantizers as bq
from bnn_cli._keras import keras, tf
from bnn_cli.errors import UserError
from bnn_cli.registry import REGISTRY, keras_scope

lq = pytest.importorskip(
    "larq", reason="Larq, the reference these tests compare with, is a test extra")



@pytest.fixture(autouse=True)
def _larq_scope_reset():
    """Larq's quantized_scope stays set when its block raises (no ``finally``); a failing
    assertion inside one must not leak into the next test."""
    yield
    lq.context._quantized_scope.should_quantize = False


# ---------------------------------------------------------------------------------------
# Every public name
# ---------------------------------------------------------------------------------------

# Larq modules that only implement what a public sibling re-exports: their names count
# where that sibling exposes them (larq.layers re-exports the layer base classes, not
# layers_base's internal BaseLayer).
_IMPLEMENTATION_OF = {"layers_base": "layers"}


def _larq_modules() -> list[str]:
    """Every public, non-test module of the larq package."""
    return sorted(
        info.name for info in pkgutil.iter_modules(lq.__path__)
        if not info.name.startswith("_") and not info.name.endswith("_test")
        and info.name not in ("conftest", "testing_utils")
    )


def _public_names(module_name: str) -> list[str]:
    """``__all__`` where the module has one, else the classes and functions Larq itself
    defines there (not what it imports from TensorFlow or the standard library)."""
    module = importlib.import_module(f"larq.{module_name}")
    if hasattr(module, "__all__"):
        return sorted(module.__all__)
    names = [
        name for name, obj in vars(module).items()
        if not name.startswith("_") and not inspect.ismodule(obj)
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and getattr(obj, "__module__", "").split(".")[0] == "larq"
    ]
    if module_name in _IMPLEMENTATION_OF:
        sibling = importlib.import_module(f"larq.{_IMPLEMENTATION_OF[module_name]}")
        names = [n for n in names if getattr(sibling, n, None) is getattr(module, n)]
    return sorted(names)


def _larq_public_api() -> list[tuple[str, str]]:
    return [(_IMPLEMENTATION_OF.get(m, m), name) for m in _larq_modules()
            for name in _public_names(m)]


def test_the_walk_finds_larq_public_api():
    api = set(_larq_public_api())
    assert set(lq.__all__) <= {m for m, _ in api}  # every module larq imports is walked
    assert "quantized_variable" in {m for m, _ in api}
    assert len(api) == 48  # larq 0.14's count; a smaller one means the walk broke
    assert {("utils", "set_precision"), ("layers", "QuantizerBaseConv"),
            ("context", "quantized_scope"), ("models", "summary")} <= api


@pytest.mark.parametrize("module_name, name", _larq_public_api())
def test_every_larq_public_name_has_a_counterpart(module_name, name):
    theirs = getattr(importlib.import_module(f"larq.{module_name}"), name)
    ours_module = importlib.import_module(f"bnn_cli.{module_name}")
    assert hasattr(ours_module, name), f"bnn_cli.{module_name} lacks {name}"
    ours = getattr(ours_module, name)
    assert callable(ours) == callable(theirs)
    if inspect.isclass(theirs):
        assert inspect.isclass(ours)
    assert name in getattr(ours_module, "__all__", [name])


def test_library_modules_never_import_larq():
    import bnn_cli

    for module_name in ("context", "utils", "quantized_variable", "layers"):
        source = inspect.getsource(importlib.import_module(f"bnn_cli.{module_name}"))
        assert "import larq" not in source and "from larq" not in source
    assert bnn_cli.__name__ == "bnn_cli"


# ---------------------------------------------------------------------------------------
# context: quantized_scope and should_quantize
# ---------------------------------------------------------------------------------------


def test_quantized_scope_sets_should_quantize_as_larq():
    seen = {"ours": [], "larq": []}
    for ctx, key in ((bcontext, "ours"), (lq.context, "larq")):
        log = seen[key]
        log.append(ctx.should_quantize())
        with ctx.quantized_scope(True) as yielded:
            log += [yielded, ctx.should_quantize()]
            with ctx.quantized_scope(False) as inner:
                log += [inner, ctx.should_quantize()]
            log.append(ctx.should_quantize())
        log.append(ctx.should_quantize())
    assert seen["ours"] == seen["larq"] == [False, True, True, False, False, True, False]


def test_quantized_scope_is_per_thread_and_restored_after_an_error():
    other = []
    with bcontext.quantized_scope(True):
        thread = threading.Thread(target=lambda: other.append(bcontext.should_quantize()))
        thread.start()
        thread.join()
        assert bcontext.should_quantize() is True
    assert other == [False]
    with pytest.raises(RuntimeError), bcontext.quantized_scope(True):
        raise RuntimeError
    assert bcontext.should_quantize() is False


def test_context_metrics_scope_is_the_metrics_modules():
    assert bcontext.metrics_scope is bmetrics.metrics_scope
    assert bcontext.get_training_metrics is bmetrics.get_training_metrics
    ours, theirs = [], []
    for ctx, log in ((bcontext, ours), (lq.context, theirs)):
        log.append(set(ctx.get_training_metrics()))
        with ctx.metrics_scope(["flip_ratio"]) as scoped:
            log += [set(scoped), set(ctx.get_training_metrics())]
        log.append(set(ctx.get_training_metrics()))
        with pytest.raises(ValueError), ctx.metrics_scope(["no_such_metric"]):
            pass
    assert ours == theirs


# ---------------------------------------------------------------------------------------
# quantized_scope on whole models: weights read out are the quantized ones
# ---------------------------------------------------------------------------------------


def _twin_models():
    """The same network in Larq and in bnn_cli, with the same latent weights.

    Kernel quantizers of several kinds (sign, magnitude-aware sign, DoReFa weights,
    none) on dense, convolution, depthwise and separable layers; a frozen layer too.
    """

    def build(L, Q):
        model = tf.keras.Sequential([
            L.QuantConv2D(3, 3, kernel_quantizer=Q.SteSign(), input_quantizer=Q.SteSign(),
                          padding="same", pad_values=1.0, input_shape=(6, 6, 2)),
            L.QuantDepthwiseConv2D(3, depthwise_quantizer=Q.MagnitudeAwareSign()),
            L.QuantSeparableConv2D(4, 2, depthwise_quantizer=Q.SteSign(),
                                   pointwise_quantizer=Q.DoReFa(k_bit=2, mode="weights")),
            tf.keras.layers.BatchNormalization(),
            tf.keras.layers.Flatten(),
            L.QuantDense(5, kernel_quantizer=Q.SteSign(), name="frozen"),
            L.QuantDense(3, kernel_quantizer=None),
        ])
        model.get_layer("frozen").trainable = False
        return model

    ours, theirs = build(blayers, bq), build(lq.layers, lq.quantizers)
    rng = np.random.default_rng(0)
    weights = [rng.normal(size=w.shape).astype(np.float32) for w in theirs.get_weights()]
    weights = [np.abs(w) + 0.5 if "variance" in v.name else w
               for w, v in zip(weights, theirs.weights, strict=True)]
    theirs.set_weights(weights)
    ours.set_weights(weights)
    return ours, theirs, weights


def _assert_same(a, b):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x, y, rtol=1e-6, atol=1e-6)


def test_get_weights_in_quantized_scope_as_larq():
    ours, theirs, latent = _twin_models()
    with bcontext.quantized_scope(True), lq.context.quantized_scope(True):
        quantized = theirs.get_weights()
        _assert_same(ours.get_weights(), quantized)
        _assert_same([w.numpy() for w in ours.weights], [w.numpy() for w in theirs.weights])
        for ol, tl in zip(ours.layers, theirs.layers, strict=True):
            _assert_same(ol.get_weights(), tl.get_weights())
            _assert_same([w.numpy() for w in ol.non_trainable_weights],
                         [w.numpy() for w in tl.non_trainable_weights])
    assert any(not np.allclose(q, w) for q, w in zip(quantized, latent, strict=True))
    assert {float(v) for v in np.unique(quantized[0])} == {-1.0, 1.0}
    # Outside the scope: the latent weights, and the forward pass never changes.
    _assert_same(ours.get_weights(), latent)
    x = np.random.default_rng(1).normal(size=(4, 6, 6, 2)).astype(np.float32)
    outside = ours(x).numpy()
    with bcontext.quantized_scope(True):
        np.testing.assert_allclose(ours(x).numpy(), outside, rtol=1e-6)
        assert isinstance(ours.layers[0].weights[0], bqv.QuantizedVariable)
        assert ours.layers[0].weights[0].precision == 1
    np.testing.assert_allclose(outside, theirs(x).numpy(), rtol=1e-5, atol=1e-5)
    assert not isinstance(ours.layers[0].weights[0], bqv.QuantizedVariable)
    assert ours.layers[0].kernel is ours.layers[0].trainable_weights[0]


def test_set_weights_in_quantized_scope_sets_the_latent_weights_as_larq():
    ours, theirs, latent = _twin_models()
    new = [w * 0.5 - 0.1 for w in latent]
    with bcontext.quantized_scope(True), lq.context.quantized_scope(True):
        ours.set_weights(new)
        theirs.set_weights(new)
    _assert_same(ours.get_weights(), theirs.get_weights())
    _assert_same(ours.get_weights(), new)


@pytest.mark.parametrize("filename", ["model.h5", "model.keras", "w.weights.h5", "w.h5"])
def test_saving_in_quantized_scope_saves_quantized_weights_as_larq(tmp_path, filename):
    ours, theirs, latent = _twin_models()
    with bcontext.quantized_scope(True), lq.context.quantized_scope(True):
        quantized = theirs.get_weights()
        if filename.startswith("w."):
            ours.save_weights(tmp_path / filename)
        else:
            ours.save(tmp_path / filename)
    if filename.startswith("w."):
        loaded, _, _ = _twin_models()
        loaded.load_weights(tmp_path / filename)
    else:
        with keras_scope():
            loaded = keras.models.load_model(tmp_path / filename)
    _assert_same(loaded.get_weights(), quantized)
    _assert_same(ours.get_weights(), latent)  # saving did not touch the model
    ours.save_weights(tmp_path / "latent.weights.h5")  # outside the scope: latent
    loaded.load_weights(tmp_path / "latent.weights.h5")
    _assert_same(loaded.get_weights(), latent)


def test_checkpoints_keep_latent_weights_in_quantized_scope_as_larq(tmp_path):
    ours, theirs, latent = _twin_models()
    with bcontext.quantized_scope(True), lq.context.quantized_scope(True):
        ours_path = tf.train.Checkpoint(model=ours).save(tmp_path / "ours")
        theirs_path = tf.train.Checkpoint(model=theirs).save(tmp_path / "theirs")
    for path, _ in ((ours_path, ours), (theirs_path, theirs)):
        fresh, _, _ = _twin_models()
        fresh.set_weights([np.zeros_like(w) for w in latent])
        tf.train.Checkpoint(model=fresh).restore(path).expect_partial()
        _assert_same(fresh.get_weights(), latent)


# ---------------------------------------------------------------------------------------
# metrics_scope on models: flip ratios tracked as Larq tracks them
# ---------------------------------------------------------------------------------------


def _train_flip_ratio_twins(scoped: bool):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(32, 6)).astype(np.float32)
    y = rng.normal(size=(32, 3)).astype(np.float32)
    kernel = (rng.normal(size=(6, 3)) * 0.05).astype(np.float32)

    def fit(L, ctx):
        with ctx.metrics_scope(["flip_ratio"] if scoped else []):
            model = tf.keras.Sequential([
                L.QuantDense(3, kernel_quantizer="ste_sign", use_bias=False,
                             input_shape=(6,)),
            ])
        model.set_weights([kernel])
        model.compile(loss="mse", optimizer=tf.keras.optimizers.SGD(0.5))
        history = model.fit(x, y, batch_size=8, epochs=3, verbose=0, shuffle=False)
        return {k.split("/")[0]: v for k, v in history.history.items()}

    return fit(blayers, bcontext), fit(lq.layers, lq.context)


def test_metrics_scope_tracks_flip_ratio_as_larq():
    ours, theirs = _train_flip_ratio_twins(scoped=True)
    assert set(ours) == set(theirs) == {"loss", "flip_ratio"}
    np.testing.assert_allclose(ours["flip_ratio"], theirs["flip_ratio"], atol=1e-6)
    np.testing.assert_allclose(ours["loss"], theirs["loss"], rtol=1e-5)
    assert max(ours["flip_ratio"]) > 0  # the test trains hard enough to flip weights


def test_no_flip_ratio_outside_metrics_scope_as_larq():
    ours, theirs = _train_flip_ratio_twins(scoped=False)
    assert set(ours) == set(theirs) == {"loss"}


# ---------------------------------------------------------------------------------------
# QuantizedVariable
# ---------------------------------------------------------------------------------------

_LATENT = np.array([[0.3, -0.2, 0.0], [-1.5, 2.0, -0.01]], dtype=np.float32)


def _twin_variables(name: str | None = None):
    """A bnn_cli and a Larq QuantizedVariable, each on its own latent variable."""
    name = name or f"v_{uuid.uuid4().hex[:6]}"
    ours = bqv.QuantizedVariable(tf.Variable(_LATENT, name=name), bq.ste_sign)
    theirs = lq.quantized_variable.QuantizedVariable(tf.Variable(_LATENT, name=name),
                                                     lq.quantizers.ste_sign)
    return ours, theirs


def _reads(v) -> list[np.ndarray]:
    return [
        v.numpy(), v.value().numpy(), v.read_value().numpy(),
        tf.convert_to_tensor(v).numpy(), tf.identity(v).numpy(), (v + 1).numpy(),
        (2 * v).numpy(), (-v).numpy(), v[1].numpy(), tf.matmul(v, v, transpose_b=True).numpy(),
        v.sparse_read([1]).numpy(), v.gather_nd([[0, 1]]).numpy(),
        tf.keras.backend.get_value(v), tf.keras.backend.batch_get_value([v])[0],
    ]


@pytest.mark.parametrize("quantize", [False, True])
def test_quantized_variable_reads_as_larq(quantize):
    ours, theirs = _twin_variables()
    with bcontext.quantized_scope(quantize), lq.context.quantized_scope(quantize):
        ours_reads, theirs_reads = _reads(ours), _reads(theirs)
        reprs = repr(ours), repr(theirs)
    assert reprs[0] == reprs[1]
    _assert_same(ours_reads, theirs_reads)
    expected = np.where(_LATENT < 0, -1.0, 1.0) if quantize else _LATENT
    np.testing.assert_array_equal(ours_reads[0], expected)


def test_quantized_variable_reads_only_its_own_librarys_scope():
    ours, _ = _twin_variables()
    with lq.context.quantized_scope(True):
        np.testing.assert_array_equal(ours.numpy(), _LATENT)


def test_quantized_variable_attributes_as_larq():
    ours, theirs = _twin_variables()
    for attr in ("name", "shape", "dtype", "trainable", "synchronization", "aggregation",
                 "constraint", "device"):
        assert getattr(ours, attr) == getattr(theirs, attr), attr
    assert ours.latent_variable is not None and ours.quantizer is bq.ste_sign
    assert ours.get_shape() == theirs.get_shape()
    assert ours.ref() != ours.latent_variable.ref()  # a different key, as in Larq
    assert tf.is_tensor(tf.convert_to_tensor(ours))
    for quantizer, precision in ((bq.SteSign(), None), (bq.SteSign(), 4), (None, None),
                                 (bq.DoReFa(k_bit=3), None), (bq.NoOp(precision=2), 8)):
        theirs_q = {type(None): None}.get(type(quantizer), lq.quantizers.SteSign())
        if isinstance(quantizer, bq.DoReFa):
            theirs_q = lq.quantizers.DoReFa(k_bit=3)
        elif isinstance(quantizer, bq.NoOp):
            theirs_q = lq.quantizers.NoOp(precision=2)
        a = bqv.QuantizedVariable(tf.Variable(1.0), quantizer, precision)
        b = lq.quantized_variable.QuantizedVariable(tf.Variable(1.0), theirs_q, precision)
        assert a.precision == b.precision


@pytest.mark.parametrize("args", [
    ("not a variable",),
    (np.zeros(2),),
    ("variable", "not callable"),
    ("variable", None, 1.0),
    ("variable", None, True),
    ("variable", None, "1"),
])
def test_quantized_variable_rejects_what_larq_rejects(args):
    args = tuple(tf.Variable(1.0) if isinstance(a, str) and a == "variable" else a
                 for a in args)
    with pytest.raises(ValueError):
        lq.quantized_variable.QuantizedVariable(*args)
    with pytest.raises(ValueError):
        bqv.QuantizedVariable(*args)


def test_quantized_variable_assign_and_scatter_as_larq():
    ours, theirs = _twin_variables()
    results = []
    for v in (ours, theirs):
        out = [v.assign(_LATENT * 2), v.assign_add(np.ones_like(_LATENT)),
               v.assign_sub(np.full_like(_LATENT, 0.5))]
        assert all(type(o).__name__ == "QuantizedVariable" for o in out)
        assert all(o.quantizer is v.quantizer for o in out)
        op = v.assign(_LATENT, read_value=False)
        assert not isinstance(op, tf.Variable)
        scattered = v.scatter_update(tf.IndexedSlices(np.array([[9.0, -9.0, 9.0]],
                                                               np.float32), [0]))
        assert scattered is v
        results.append(v.latent_variable.numpy())
        with (bcontext.quantized_scope(True) if v is ours
              else lq.context.quantized_scope(True)):
            results.append(v.numpy())
    _assert_same(results[:2], results[2:])


def test_quantized_variable_gradients_as_larq():
    grads = []
    for v, ctx in zip(_twin_variables(), (bcontext, lq.context), strict=True):
        for quantize in (False, True):
            with ctx.quantized_scope(quantize), tf.GradientTape() as tape:
                loss = tf.reduce_sum(v * tf.constant([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]))
            grads.append(tape.gradient(loss, v).numpy())
    _assert_same(grads[:2], grads[2:])
    assert not np.allclose(grads[0], grads[1])  # the STE clips |w| > 1 in the scope


def test_quantized_variable_in_tf_function_as_larq():
    ours, theirs = _twin_variables()
    traces = []

    @tf.function
    def double(v):
        traces.append(1)
        return v * 2.0

    results = []
    for v, ctx in ((ours, bcontext), (theirs, lq.context)):
        results.append(double(v).numpy())
        with ctx.quantized_scope(True):
            results.append(tf.function(lambda v=v: v * 2.0)().numpy())
    _assert_same(results[:2], results[2:])
    traces.clear()
    for _ in range(3):
        double(ours)
    assert len(traces) <= 1  # the same variable reuses its trace
    other = bqv.QuantizedVariable(ours.latent_variable, lambda x: x * 0.0)
    with bcontext.quantized_scope(True):
        np.testing.assert_array_equal(tf.function(lambda v: v + 0.0)(other).numpy(),
                                      np.zeros_like(_LATENT))
    spec = ours.__tf_tracing_type__(None)
    assert isinstance(spec, bqv.QuantizedVariableSpec)
    assert spec == ours.__tf_tracing_type__(None) and hash(spec) == hash(
        ours.__tf_tracing_type__(None))
    assert spec != other.__tf_tracing_type__(None)
    assert spec.is_subtype_of(spec) and spec.most_specific_common_supertype([spec]) is spec
    assert spec.placeholder_value() is ours


def test_quantized_variable_checkpoints_as_its_latent_variable(tmp_path):
    ours, _ = _twin_variables()
    with bcontext.quantized_scope(True):
        path = tf.train.Checkpoint(v=ours).save(tmp_path / "ckpt")
    plain = tf.Variable(np.zeros_like(_LATENT))
    tf.train.Checkpoint(v=plain).restore(path)
    np.testing.assert_array_equal(plain.numpy(), _LATENT)
    back = bqv.QuantizedVariable(tf.Variable(np.zeros_like(_LATENT)), bq.ste_sign)
    tf.train.Checkpoint(v=back).restore(path)
    np.testing.assert_array_equal(back.latent_variable.numpy(), _LATENT)


def test_quantized_variable_from_distributed_variable_as_larq():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        ours_latent, theirs_latent = tf.Variable(_LATENT), tf.Variable(_LATENT)
    ours = bqv.QuantizedVariable.from_variable(ours_latent, bq.ste_sign)
    theirs = lq.quantized_variable.QuantizedVariable.from_variable(
        theirs_latent, lq.quantizers.ste_sign)
    assert isinstance(ours, type(ours_latent)) and isinstance(ours, bqv.QuantizedVariable)
    assert isinstance(theirs, type(theirs_latent))
    with bcontext.quantized_scope(True), lq.context.quantized_scope(True):
        ours_reads = [tf.convert_to_tensor(ours).numpy(), (ours + 1).numpy(), ours.numpy()]
        # (Larq's numpy() hands its quantizer the variable itself, which fails here.)
        theirs_reads = [tf.convert_to_tensor(theirs).numpy(), (theirs + 1).numpy()]
    _assert_same(ours_reads[:2], theirs_reads)
    np.testing.assert_array_equal(ours_reads[2], ours_reads[0])
    np.testing.assert_array_equal(ours_reads[0], np.where(_LATENT < 0, -1.0, 1.0))
    plain = bqv.QuantizedVariable.from_variable(tf.Variable(_LATENT))
    assert type(plain) is bqv.QuantizedVariable


# ---------------------------------------------------------------------------------------
# Layer base classes
# ---------------------------------------------------------------------------------------

_BASES = ("QuantizerBase", "QuantizerBaseConv", "QuantizerDepthwiseBase",
          "QuantizerSeparableBase")


def test_quant_layers_derive_from_the_bases_as_larqs():
    for cls in blayers.QUANT_LAYERS:
        theirs = getattr(lq.layers, cls.__name__)
        assert [issubclass(cls, getattr(blayers, b)) for b in _BASES] == [
            issubclass(theirs, getattr(lq.layers, b)) for b in _BASES], cls.__name__
    for base in _BASES:
        assert issubclass(getattr(blayers, base), keras.layers.Layer)


@pytest.mark.parametrize("base, keras_layer, kwargs, x_shape", [
    ("QuantizerBase", "Dense", dict(units=4, kernel_quantizer="ste_sign"), (3, 5)),
    ("QuantizerBase", "Conv1D", dict(filters=2, kernel_size=2, kernel_quantizer="ste_sign"),
     (2, 6, 3)),
    ("QuantizerDepthwiseBase", "DepthwiseConv2D",
     dict(kernel_size=2, depthwise_quantizer="ste_sign"), (2, 5, 5, 3)),
    ("QuantizerSeparableBase", "SeparableConv2D",
     dict(filters=3, kernel_size=2, depthwise_quantizer="ste_sign",
          pointwise_quantizer="ste_sign"), (2, 5, 5, 2)),
    ("QuantizerBaseConv", "Conv2D",
     dict(filters=2, kernel_size=3, kernel_quantizer="ste_sign", padding="same",
          pad_values=1.0), (2, 5, 5, 2)),
])
def test_user_layers_on_the_bases_as_larq(base, keras_layer, kwargs, x_shape):
    """A layer written the Larq way, ``class L(QuantizerBase, keras.layers.Dense)``."""

    def define(L, Q):
        bases = (getattr(L, base),)
        if base == "QuantizerBaseConv":
            bases = (L.QuantizerBase, L.QuantizerBaseConv)
        resolved = {k: (Q.SteSign() if k.endswith("_quantizer") else v)
                    for k, v in kwargs.items()}
        cls = type(f"My{keras_layer}", (*bases, getattr(tf.keras.layers, keras_layer)), {})
        return cls(input_quantizer=Q.SteSign(), **resolved)

    ours, theirs = define(blayers, bq), define(lq.layers, lq.quantizers)
    x = np.random.default_rng(3).normal(size=x_shape).astype(np.float32)
    theirs(x)
    ours(x)
    ours.set_weights(theirs.get_weights())
    np.testing.assert_allclose(ours(x).numpy(), theirs(x).numpy(), rtol=1e-5, atol=1e-5)
    with bcontext.quantized_scope(True), lq.context.quantized_scope(True):
        _assert_same(ours.get_weights(), theirs.get_weights())
    quantizer_keys = {k for k in theirs.get_config() if k.endswith("quantizer")}
    assert quantizer_keys == {k for k in ours.get_config() if k.endswith("quantizer")}
    if base == "QuantizerBaseConv":
        assert ours.get_config()["pad_values"] == theirs.get_config()["pad_values"]


# ---------------------------------------------------------------------------------------
# utils
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("bits", [0, 1, 8, 8 * 1023, 8 * 1024, 8 * 1536, 8 * 1024**2 - 8,
                                  8 * 1024**2, 123_456_789, 8 * 5 * 1024**3,
                                  8 * 3 * 1024**4, 8 * 1023.999 * 1024])
def test_memory_as_readable_str_as_larq(bits):
    assert butils.memory_as_readable_str(bits) == lq.utils.memory_as_readable_str(bits)


@pytest.mark.parametrize("precision", [None, 1, 2, 8, 32])
def test_set_precision_as_larq(precision):
    args = () if precision is None else (precision,)

    def ours(x):
        return x

    def theirs(x):
        return x

    assert butils.set_precision(*args)(ours) is ours
    assert lq.utils.set_precision(*args)(theirs) is theirs
    assert ours.precision == theirs.precision


class _Holder:
    shared = "class value"

    def __init__(self):
        self.own = "own value"


@pytest.mark.parametrize("attr", ["own", "shared"])
def test_patch_object_as_larq(attr):
    states = []
    for patch in (butils.patch_object, lq.utils.patch_object):
        obj = _Holder()
        before = getattr(obj, attr)
        with patch(obj, attr, "patched"):
            inside = getattr(obj, attr)
        states.append((before, inside, getattr(obj, attr), dict(vars(obj))))
        with pytest.raises(AttributeError), patch(obj, "missing", 1):
            pass
    assert states[0] == states[1]


def test_patch_object_restores_after_an_error():
    obj = _Holder()
    with pytest.raises(KeyError), butils.patch_object(obj, "own", "patched"):
        raise KeyError
    assert obj.own == "own value"


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:8]}"


def test_register_keras_custom_object_quantizer_function():
    name = _unique("larq_api_sign_")

    def quantizer(x):
        return tf.sign(x) * 2.0

    quantizer.__name__ = name
    registered = butils.register_keras_custom_object(butils.set_precision(2)(quantizer))
    assert registered is quantizer
    entry = REGISTRY.get("quantizer", name)
    assert entry.obj is quantizer and entry.precision == 2
    assert bq.get(name) is quantizer
    layer = blayers.QuantDense(2, kernel_quantizer=name, activation=name)
    y = layer(np.ones((1, 3), np.float32))
    assert set(np.unique(np.abs(y.numpy()))) <= {0.0, 2.0}
    with pytest.raises(UserError, match="already registered"):
        butils.register_alias("ste_sign")(quantizer)


def test_register_alias_and_custom_object_on_classes(tmp_path):
    metric_alias, layer_name = _unique("degeneration_"), _unique("LarqApiLayer")

    @butils.register_alias(metric_alias)
    @butils.register_keras_custom_object
    class Degeneration(keras.metrics.Mean):
        pass

    entry = REGISTRY.get("metric", metric_alias)
    assert entry.obj is Degeneration and entry.names == ("Degeneration", metric_alias)

    class Doubling(keras.layers.Layer):
        def call(self, inputs):
            return inputs * 2.0

    Doubling.__name__ = layer_name
    butils.register_keras_custom_object(Doubling)
    assert REGISTRY.get("layer", layer_name).obj is Doubling
    model = keras.Sequential([keras.layers.InputLayer((2,)), Doubling()])
    model.save(tmp_path / "m.h5")
    loaded = keras.models.load_model(tmp_path / "m.h5")  # no custom_objects needed
    assert type(loaded.layers[-1]) is Doubling
    with pytest.raises(UserError):
        butils.register_keras_custom_object(type("NotAComponent", (), {}))


def test_bnn_summary_still_reads_memory_like_larq():
    # memory_as_readable_str is the summaries' own formatting, not a second copy.
    assert butils.memory_as_readable_str(8 * 2048) == bmodels._readable_memory(8 * 2048)
