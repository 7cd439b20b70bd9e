"""Quantized layers: differential tests against Larq 0.14 (the reference), equivalence
with plain Keras layers, warnings, serialization and the documented examples.

Larq objects are always built from explicit Larq classes: plain names such as
``"ste_sign"`` resolve to bnn_cli's objects (see ``conftest.py``).
"""

from __future__ import annotations

import logging

import numpy as np
import pytest

from bnn_cli import layers as bl
from bnn_cli import models
from bnn_cli import quantizers as bq
from bnn_cli._keras import keras, tf

lq = pytest.importorskip(
    "larq", reason="Larq, the reference these tests compare with, is a test extra")

F32 = np.float32

# ---------------------------------------------------------------------------------------
# Layer table
# ---------------------------------------------------------------------------------------

# name -> (keras base class, base kwargs, input shape, quantized-kernel arguments)
LAYERS = {
    "QuantDense": (keras.layers.Dense, {"units": 3}, (4, 5), ("kernel",)),
    "QuantConv1D": (keras.layers.Conv1D, {"filters": 3, "kernel_size": 3}, (2, 9, 4),
                    ("kernel",)),
    "QuantConv2D": (keras.layers.Conv2D, {"filters": 3, "kernel_size": 3}, (2, 7, 7, 3),
                    ("kernel",)),
    "QuantConv3D": (keras.layers.Conv3D, {"filters": 2, "kernel_size": 2}, (2, 5, 5, 5, 2),
                    ("kernel",)),
    "QuantDepthwiseConv2D": (keras.layers.DepthwiseConv2D,
                             {"kernel_size": 3, "depth_multiplier": 2}, (2, 7, 7, 3),
                             ("depthwise",)),
    "QuantSeparableConv1D": (keras.layers.SeparableConv1D,
                             {"filters": 3, "kernel_size": 3, "depth_multiplier": 2},
                             (2, 9, 4), ("depthwise", "pointwise")),
    "QuantSeparableConv2D": (keras.layers.SeparableConv2D,
                             {"filters": 3, "kernel_size": 3}, (2, 7, 7, 3),
                             ("depthwise", "pointwise")),
    "QuantConv2DTranspose": (keras.layers.Conv2DTranspose, {"filters": 3, "kernel_size": 3},
                             (2, 5, 5, 3), ("kernel",)),
    "QuantConv3DTranspose": (keras.layers.Conv3DTranspose, {"filters": 2, "kernel_size": 2},
                             (2, 3, 4, 3, 2), ("kernel",)),
    "QuantLocallyConnected1D": (keras.layers.LocallyConnected1D,
                                {"filters": 3, "kernel_size": 3}, (2, 8, 4), ("kernel",)),
    "QuantLocallyConnected2D": (keras.layers.LocallyConnected2D,
                                {"filters": 3, "kernel_size": 3}, (2, 6, 6, 3), ("kernel",)),
}
PAD_VALUE_LAYERS = ["QuantConv1D", "QuantConv2D", "QuantConv3D", "QuantDepthwiseConv2D",
                    "QuantSeparableConv1D", "QuantSeparableConv2D"]
TRANSPOSE_LAYERS = ["QuantConv2DTranspose", "QuantConv3DTranspose"]
LOCAL_LAYERS = ["QuantLocallyConnected1D", "QuantLocallyConnected2D"]

# Structural configurations per layer family: (id, kwargs)
STRUCTURES = {
    "QuantDense": [("default", {}), ("3d_input", {"_shape": (2, 3, 5)})],
    **{name: [
        ("default", {}),
        ("same_pad1", {"padding": "same", "pad_values": 1.0}),
        ("same_pad1_strides2", {"padding": "same", "pad_values": 1.0, "strides": 2}),
        ("same_pad1_dilation2", {"padding": "same", "pad_values": 1.0, "dilation_rate": 2}),
        ("same_pad0.5_strides2", {"padding": "same", "pad_values": 0.5, "strides": 2}),
        ("same_pad0", {"padding": "same"}),
        ("valid_strides2", {"strides": 2}),
        ("channels_first_same_pad1", {"padding": "same", "pad_values": 1.0,
                                      "data_format": "channels_first"}),
    ] for name in PAD_VALUE_LAYERS},
    **{name: [
        ("default", {}),
        ("same_strides2", {"padding": "same", "strides": 2}),
        ("valid_strides2_outpad", {"strides": 2, "output_padding": 1}),
        ("dilation2", {"dilation_rate": 2}),
        ("channels_first", {"data_format": "channels_first"}),
    ] for name in TRANSPOSE_LAYERS},
    **{name: [
        ("impl1", {"implementation": 1}),
        ("impl2", {"implementation": 2}),
        ("impl3", {"implementation": 3}),
        ("impl2_same", {"implementation": 2, "padding": "same"}),
        ("strides2", {"strides": 2}),
        ("channels_first", {"data_format": "channels_first"}),
    ] for name in LOCAL_LAYERS},
}


def _quantizer_sets():
    """id -> (bnn_cli input, bnn_cli kernel, Larq input, Larq kernel) factories."""
    return {
        # bnn_cli by name (its own registry), Larq by explicit class.
        "ste_sign": (lambda: "ste_sign", lambda: "ste_sign",
                     lambda: lq.quantizers.SteSign(), lambda: lq.quantizers.SteSign()),
        "dorefa": (lambda: bq.DoReFa(k_bit=2), lambda: bq.DoReFa(k_bit=2, mode="weights"),
                   lambda: lq.quantizers.DoReFa(k_bit=2),
                   lambda: lq.quantizers.DoReFa(k_bit=2, mode="weights")),
        "approx_magnitude": (
            lambda: bq.ApproxSign(), lambda: bq.MagnitudeAwareSign(clip_value=0.5),
            lambda: lq.quantizers.ApproxSign(),
            lambda: lq.quantizers.MagnitudeAwareSign(clip_value=0.5)),
    }


def _differential_cases():
    cases = []
    for name, structures in STRUCTURES.items():
        for sid, kwargs in structures:
            qsets = ["ste_sign"]  # strides, dilation ...: with the binary quantizers
            if sid in ("default", "impl1", "3d_input") or sid.startswith(
                    ("same_pad1", "channels_first", "same_strides2", "impl2_same")):
                qsets.append("dorefa")
            if sid in ("default", "impl1"):
                qsets.append("approx_magnitude")
            cases += [pytest.param(name, kwargs, q, id=f"{name}-{sid}-{q}") for q in qsets]
    return cases


def _split(name: str, structure: dict):
    base_cls, base_kwargs, shape, _ = LAYERS[name]
    kwargs = {**base_kwargs, **structure}
    shape = kwargs.pop("_shape", shape)
    if kwargs.get("data_format") == "channels_first":
        shape = (shape[0], shape[-1], *shape[1:-1])
    return base_cls, kwargs, shape


def _quantizer_kwargs(name: str, make_input, make_kernel) -> dict:
    kwargs = {"input_quantizer": make_input()}
    for prefix in LAYERS[name][3]:
        kwargs[f"{prefix}_quantizer"] = make_kernel()
        # A constraint avoids the starved-weights warning; any one will do here.
        kwargs[f"{prefix}_constraint"] = keras.constraints.MaxNorm(100.0)
    return kwargs


def _random_weights(layer, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1.5, 1.5, size=w.shape).astype(F32) for w in layer.get_weights()]


def _inputs(shape, seed: int = 1) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.3, 1.0, size=shape).astype(F32)


def _upstream(shape, seed: int = 2) -> tf.Tensor:
    rng = np.random.default_rng(seed)
    sign = np.where(rng.random(size=shape) < 0.5, -1.0, 1.0)
    return tf.constant((rng.uniform(0.5, 2.0, size=shape) * sign).astype(F32))


def _run(layer, x: np.ndarray, dy: tf.Tensor | None = None):
    """Outputs and the gradients wrt the input and every trainable weight."""
    x = tf.constant(x)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = layer(x)
    dy = _upstream(y.shape) if dy is None else dy
    grads = tape.gradient(y, [x, *layer.trainable_weights], output_gradients=dy)
    assert all(g is not None for g in grads), "a gradient is missing"
    return y.numpy(), [tf.convert_to_tensor(g).numpy() for g in grads], dy


def _build_same_weights(ours, theirs, shape):
    ours.build(shape)
    theirs.build(shape)
    weights = _random_weights(ours)
    ours.set_weights(weights)
    theirs.set_weights(weights)
    assert [w.shape for w in ours.trainable_weights] == [w.shape for w in theirs.trainable_weights]
    short = [w.name.split("/")[-1] for w in ours.trainable_weights]
    assert short == [w.name.split("/")[-1] for w in theirs.trainable_weights]
    return weights


def _skip_if_cpu_cannot(base_cls, kwargs, shape):
    """Some ops have no channels_first kernel on CPU: skip where Keras itself fails."""
    if kwargs.get("data_format") != "channels_first":
        return
    plain = {k: v for k, v in kwargs.items() if k != "pad_values"}
    try:
        base_cls(**plain)(tf.zeros(shape))
    except (tf.errors.UnimplementedError, tf.errors.InvalidArgumentError) as exc:
        pytest.skip(f"{base_cls.__name__} channels_first unsupported on this device: "
                    f"{type(exc).__name__}")


# ---------------------------------------------------------------------------------------
# Differential tests against Larq
# ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "structure", "qset"), _differential_cases())
def test_layer_matches_larq(name, structure, qset):
    base_cls, kwargs, shape = _split(name, structure)
    _skip_if_cpu_cannot(base_cls, kwargs, shape)
    make_in, make_k, make_lq_in, make_lq_k = _quantizer_sets()[qset]
    ours = getattr(bl, name)(**kwargs, **_quantizer_kwargs(name, make_in, make_k))
    theirs = getattr(lq.layers, name)(**kwargs, **_quantizer_kwargs(name, make_lq_in, make_lq_k))
    _build_same_weights(ours, theirs, shape)
    x = _inputs(shape)
    y, grads, dy = _run(ours, x)
    y_ref, grads_ref, _ = _run(theirs, x, dy)
    assert y.shape == y_ref.shape
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-5, err_msg="outputs differ")
    labels = ["input"] + [w.name for w in ours.trainable_weights]
    for label, g, g_ref in zip(labels, grads, grads_ref, strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-5, atol=1e-5,
                                   err_msg=f"gradient wrt {label} differs")
    # The quantizers must actually have acted (a no-op would also "match" if both broke).
    plain = base_cls(**{k: v for k, v in kwargs.items() if k != "pad_values"})
    plain.build(shape)
    plain.set_weights(ours.get_weights())
    assert not np.allclose(plain(tf.constant(x)).numpy(), y)


@pytest.mark.parametrize("name", PAD_VALUE_LAYERS)
def test_pad_values_change_the_border(name):
    """Padding with 1.0 differs from zero padding, exactly at the border, as in Larq."""
    base_cls, kwargs, shape = _split(name, {"padding": "same"})
    ones = {f"{prefix}_initializer": "ones" for prefix in LAYERS[name][3]}
    x = np.zeros(shape, F32)
    y1 = getattr(bl, name)(**kwargs, pad_values=1.0, use_bias=False, **ones)(x).numpy()
    y0 = getattr(bl, name)(**kwargs, use_bias=False, **ones)(x).numpy()
    ref = getattr(lq.layers, name)(**kwargs, pad_values=1.0, use_bias=False, **ones)(x).numpy()
    np.testing.assert_array_equal(y0, np.zeros_like(y0))
    np.testing.assert_array_equal(y1, ref)
    assert (y1 > 0).any()
    center = tuple([slice(None)] + [s // 2 for s in shape[1:-1]] + [slice(None)])
    np.testing.assert_array_equal(y1[center], 0.0)  # kernel window fully inside


def test_pad_values_conv2d_by_hand():
    layer = bl.QuantConv2D(1, 3, padding="same", pad_values=1.0, use_bias=False,
                           kernel_initializer="ones")
    y = layer(tf.zeros([1, 3, 3, 1])).numpy()[0, :, :, 0]
    np.testing.assert_array_equal(y, [[5, 3, 5], [3, 0, 3], [5, 3, 5]])


BORDER_CASES = [
    (bl.QuantConv1D, (4, 9, 3), {"kernel_size": 4, "strides": 2}),
    (bl.QuantConv2D, (4, 7, 8, 3), {"kernel_size": 3}),
    (bl.QuantConv2D, (4, 8, 8, 3), {"kernel_size": 3, "strides": 2}),
    (bl.QuantConv2D, (4, 10, 7, 3), {"kernel_size": (4, 2), "strides": (3, 2)}),
    (bl.QuantConv2D, (4, 9, 6, 3), {"kernel_size": (3, 5), "dilation_rate": 2}),
    (bl.QuantConv3D, (2, 5, 6, 4, 2), {"kernel_size": 3}),
]


def _padded_step(layer, x, training):
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        y = layer(x, training=training)
        loss = tf.reduce_sum(y * tf.cos(y))
    return y.numpy(), tape.gradient(loss, x).numpy(), tape.gradient(loss, layer.kernel).numpy()


@pytest.mark.parametrize("cls,shape,kwargs", BORDER_CASES)
def test_training_border_term_equals_explicit_padding(cls, shape, kwargs):
    """In training, pad_values=1 is a zero-padded convolution plus the convolution of one
    padded example of zeros: the same outputs and pseudo-gradients as padding the input
    (which inference keeps), strided, dilated and with odd and even sizes."""
    layer = cls(filters=5, padding="same", pad_values=1.0, input_quantizer="ste_sign",
                kernel_quantizer="ste_sign", **kwargs)
    x = tf.constant(np.random.default_rng(0).uniform(-1, 1, shape).astype(F32))
    layer(x)
    assert layer._border_term
    inference, training = _padded_step(layer, x, False), _padded_step(layer, x, True)
    np.testing.assert_array_equal(training[0], inference[0])  # (sums of +-1: exact)
    for label, a, b in zip(("input", "kernel"), training[1:], inference[1:], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=label)


def test_the_border_term_without_static_sizes():
    """Where the spatial sizes are known only at run time (no constant M to build), the
    border term is the convolution of one padded example of zeros: the same outputs."""
    layer = bl.QuantConv2D(5, 3, strides=2, padding="same", pad_values=1.0,
                           input_quantizer="ste_sign", kernel_quantizer="ste_sign")
    x = tf.constant(np.random.default_rng(1).uniform(-1, 1, (3, 7, 8, 2)).astype(F32))
    inference = layer(x, training=False).numpy()
    dynamic = tf.function(lambda x: layer(x, training=True),
                          input_signature=[tf.TensorSpec((None, None, None, 2))])
    np.testing.assert_array_equal(dynamic(x).numpy(), inference)
    conv_inputs = [op.inputs[0].shape.as_list() for op in
                   dynamic.get_concrete_function().graph.get_operations()
                   if op.type == "Conv2D"]
    assert len(conv_inputs) == 2  # (the batch, then the one example)


def test_outside_taps_by_hand():
    """M for a 3x3 kernel on a 3x3 input, stride 1: the corner output misses 5 taps
    (the first row and column), the centre none."""
    layer = bl.QuantConv2D(1, 3, padding="same", pad_values=1.0)
    outside = layer._outside_taps([3, 3])
    assert outside.shape == (9, 9)
    np.testing.assert_array_equal(outside[0].reshape(3, 3), [[1, 1, 1], [1, 0, 0], [1, 0, 0]])
    assert outside[4].sum() == 0
    np.testing.assert_array_equal(outside[8].reshape(3, 3), [[0, 0, 1], [0, 0, 1], [1, 1, 1]])


def _ops(layer, shape, training):
    fn = tf.function(lambda x: layer(x, training=training))
    graph = fn.get_concrete_function(tf.TensorSpec(shape, tf.float32)).graph
    return {op.type for op in graph.get_operations()}


def test_the_border_term_is_for_training_only():
    """Training skips the padded copy of the batch; inference (and so the Larq Compute
    Engine converter) still sees Pad then a "valid" convolution, the pattern it fuses."""
    layer = bl.QuantConv2D(4, 3, padding="same", pad_values=1.0, input_quantizer="ste_sign",
                           kernel_quantizer="ste_sign")
    layer.build((None, 6, 6, 2))
    assert "Pad" in _ops(layer, (None, 6, 6, 2), training=False) or \
        "PadV2" in _ops(layer, (None, 6, 6, 2), training=False)
    conv_inputs = [op.inputs[0].shape.as_list() for op in tf.function(
        lambda x: layer(x, training=True)).get_concrete_function(
        tf.TensorSpec((8, 6, 6, 2), tf.float32)).graph.get_operations()
        if op.type == "Conv2D"]
    # one convolution, of the batch as it is: no padded copy, no second convolution
    assert conv_inputs == [[8, 6, 6, 2]]
    depthwise = bl.QuantDepthwiseConv2D(3, padding="same", pad_values=1.0)
    depthwise.build((None, 6, 6, 2))
    assert not depthwise._border_term  # (it calls TensorFlow itself: explicit padding)


def test_causal_padding_with_pad_values_rejected():
    with pytest.raises(ValueError, match="ausal"):
        bl.QuantConv1D(2, 3, padding="causal", pad_values=1.0)
    bl.QuantConv1D(2, 3, padding="causal")  # zero padding is fine


# ---------------------------------------------------------------------------------------
# Without quantizers a layer is its Keras counterpart
# ---------------------------------------------------------------------------------------


def _plain_cases():
    return [pytest.param(name, kwargs, id=f"{name}-{sid}")
            for name, structures in STRUCTURES.items()
            for sid, kwargs in structures if "pad_values" not in kwargs]


@pytest.mark.parametrize(("name", "structure"), _plain_cases())
def test_without_quantizers_equals_keras_layer(name, structure):
    base_cls, kwargs, shape = _split(name, structure)
    _skip_if_cpu_cannot(base_cls, kwargs, shape)
    ours = getattr(bl, name)(**kwargs)
    plain = base_cls(**kwargs)
    ours.build(shape)
    plain.build(shape)
    weights = _random_weights(ours, seed=5)
    ours.set_weights(weights)
    plain.set_weights(weights)
    assert ours.input_quantizer is None
    x = _inputs(shape, seed=6)
    y, grads, dy = _run(ours, x)
    y_ref, grads_ref, _ = _run(plain, x, dy)
    np.testing.assert_array_equal(y, y_ref)
    for g, g_ref in zip(grads, grads_ref, strict=True):
        np.testing.assert_allclose(g, g_ref, rtol=1e-6, atol=1e-6)


# ---------------------------------------------------------------------------------------
# Starved-weights warning
# ---------------------------------------------------------------------------------------


def _warning_cases():
    return [pytest.param(name, prefix, id=f"{name}-{prefix}")
            for name, (_, _, _, prefixes) in LAYERS.items() for prefix in prefixes]


def _messages(caplog):
    return [r.getMessage() for r in caplog.records if r.name == "bnn_cli.layers"
            and r.levelno == logging.WARNING]


@pytest.mark.parametrize(("name", "prefix"), _warning_cases())
def test_starved_weights_warning(caplog, name, prefix):
    _, kwargs, _ = _split(name, {})
    cls = getattr(bl, name)
    caplog.set_level(logging.WARNING, logger="bnn_cli.layers")
    cls(**kwargs, **{f"{prefix}_quantizer": "ste_sign"})
    messages = _messages(caplog)
    assert len(messages) == 1, messages
    assert f"{prefix}_constraint" in messages[0] and "starved" in messages[0]
    caplog.clear()
    cls(**kwargs, **{f"{prefix}_quantizer": "ste_sign",
                     f"{prefix}_constraint": keras.constraints.MaxNorm(1.0)})
    cls(**kwargs, **{f"{prefix}_quantizer": bq.DoReFa(k_bit=2, mode="weights")})
    cls(**kwargs, **{f"{prefix}_quantizer": bq.NoOp(precision=1)})
    cls(**kwargs, input_quantizer="ste_sign")
    assert _messages(caplog) == []


def test_starved_weights_warning_per_kernel_of_separable(caplog):
    caplog.set_level(logging.WARNING, logger="bnn_cli.layers")
    bl.QuantSeparableConv2D(2, 3, depthwise_quantizer="ste_sign",
                            pointwise_quantizer=bq.ApproxSign(),
                            depthwise_constraint=keras.constraints.MaxNorm(1.0))
    messages = _messages(caplog)
    assert len(messages) == 1 and "pointwise_constraint" in messages[0]


# ---------------------------------------------------------------------------------------
# Serialization
# ---------------------------------------------------------------------------------------


def _config_cases():
    return [pytest.param(name, structures[-1][1] if name != "QuantDense" else {}, id=name)
            for name, structures in STRUCTURES.items()]


@pytest.mark.parametrize(("name", "structure"), _config_cases())
def test_get_config_from_config(name, structure):
    base_cls, kwargs, shape = _split(name, structure)
    kwargs.pop("data_format", None)
    shape = _split(name, {})[2]
    if name in PAD_VALUE_LAYERS:
        kwargs.update(padding="same", pad_values=1.0)
    qkw = _quantizer_kwargs(name, lambda: bq.DoReFa(k_bit=3), lambda: "ste_sign")
    layer = getattr(bl, name)(**kwargs, **qkw)
    config = layer.get_config()
    assert config["input_quantizer"]["class_name"] == "DoReFa"
    assert config["input_quantizer"]["config"]["k_bit"] == 3
    for prefix in LAYERS[name][3]:
        assert config[f"{prefix}_quantizer"]["class_name"] == "SteSign"
    if name in PAD_VALUE_LAYERS:
        assert config["pad_values"] == 1.0
    clone = type(layer).from_config(config)
    assert clone.get_config() == config
    layer.build(shape)
    clone.build(shape)
    clone.set_weights(layer.get_weights())
    x = tf.constant(_inputs(shape))
    np.testing.assert_array_equal(clone(x).numpy(), layer(x).numpy())


def test_larq_layer_config_loads_into_bnn_cli():
    theirs = lq.layers.QuantConv2D(4, 3, padding="same", pad_values=1.0,
                                   input_quantizer=lq.quantizers.SteSign(clip_value=0.5),
                                   kernel_quantizer=lq.quantizers.DoReFa(k_bit=2,
                                                                         mode="weights"),
                                   kernel_constraint=keras.constraints.MaxNorm(1.0))
    ours = bl.QuantConv2D.from_config(theirs.get_config())
    assert isinstance(ours.input_quantizer, bq.SteSign)
    assert ours.input_quantizer.clip_value == 0.5
    assert isinstance(ours.kernel_quantizer, bq.DoReFa)
    assert ours.kernel_quantizer.mode == "weights"
    assert ours.pad_values == 1.0


def _model(family: str):
    keras.utils.set_random_seed(7)
    c = keras.constraints.MaxNorm(1.0)
    if family == "2d":
        inputs = keras.Input((8, 8, 3))
        h = bl.QuantConv2D(4, 3, padding="same", pad_values=1.0, strides=2,
                           kernel_quantizer="ste_sign", kernel_constraint=c)(inputs)
        h = bl.QuantDepthwiseConv2D(3, padding="same", pad_values=1.0,
                                    input_quantizer="ste_sign",
                                    depthwise_quantizer=bq.MagnitudeAwareSign(clip_value=0.5),
                                    depthwise_constraint=c)(h)
        h = bl.QuantSeparableConv2D(4, 3, padding="same", pad_values=-1.0,
                                    input_quantizer="ste_sign",
                                    depthwise_quantizer="ste_sign",
                                    pointwise_quantizer="ste_sign",
                                    depthwise_constraint=c, pointwise_constraint=c)(h)
        h = bl.QuantConv2DTranspose(3, 3, strides=2, padding="same",
                                    input_quantizer="ste_sign",
                                    kernel_quantizer="ste_sign", kernel_constraint=c)(h)
        h = bl.QuantLocallyConnected2D(2, 3, input_quantizer="ste_sign",
                                       kernel_quantizer="ste_sign", kernel_constraint=c,
                                       implementation=2)(h)
        return keras.Model(inputs, keras.layers.Flatten()(h))
    # Dense, 1D and 3D layers in one three-input model (one save/load per format).
    dense_in = keras.Input((6,))
    d = bl.QuantDense(8, kernel_quantizer="ste_sign", kernel_constraint=c)(dense_in)
    d = bl.QuantDense(4, input_quantizer="ste_sign", kernel_quantizer=bq.SteTern(),
                      activation="ste_sign")(d)
    d = bl.QuantDense(3, input_quantizer=bq.DoReFa(k_bit=2),
                      kernel_quantizer=bq.DoReFa(k_bit=2, mode="weights"))(d)
    seq_in = keras.Input((10, 3))
    s = bl.QuantConv1D(4, 3, padding="same", pad_values=1.0, kernel_quantizer="ste_sign",
                       kernel_constraint=c)(seq_in)
    s = bl.QuantSeparableConv1D(4, 3, padding="same", pad_values=1.0,
                                input_quantizer="ste_sign", depthwise_quantizer="ste_sign",
                                pointwise_quantizer=bq.SwishSign(beta=2.0))(s)
    s = bl.QuantLocallyConnected1D(2, 3, input_quantizer="approx_sign",
                                   kernel_quantizer="ste_sign", kernel_constraint=c)(s)
    vol_in = keras.Input((4, 4, 4, 2))
    v = bl.QuantConv3D(2, 2, padding="same", pad_values=1.0, kernel_quantizer="ste_sign",
                       kernel_constraint=c)(vol_in)
    v = bl.QuantConv3DTranspose(2, 2, input_quantizer="ste_sign",
                                kernel_quantizer="ste_sign", kernel_constraint=c)(v)
    flat = keras.layers.Concatenate()([d, keras.layers.Flatten()(s), keras.layers.Flatten()(v)])
    return keras.Model([dense_in, seq_in, vol_in], flat)


@pytest.mark.parametrize("fmt", ["keras", "h5"])
@pytest.mark.parametrize("family", ["dense_1d_3d", "2d"])
def test_model_save_and_load(tmp_path, family, fmt):
    model = _model(family)
    shapes = model.input_shape if isinstance(model.input_shape, list) else [model.input_shape]
    x = [_inputs((3, *shape[1:]), seed=8 + i) for i, shape in enumerate(shapes)]
    y = model.predict(x, verbose=0)
    path = tmp_path / f"model.{fmt}"
    model.save(path)
    reloaded = keras.models.load_model(path)  # no custom_objects
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), y)
    for before, after in zip(model.layers, reloaded.layers, strict=True):
        assert type(after) is type(before)
        assert after.get_config() == before.get_config()
        if isinstance(before, bl.PadValuesMixin):
            assert after.pad_values == before.pad_values


@pytest.mark.parametrize("fmt", ["keras", "h5"])
def test_model_saved_by_larq_loads_with_bnn_cli_classes(tmp_path, fmt):
    keras.utils.set_random_seed(9)
    c = keras.constraints.MaxNorm(1.0)
    model = keras.Sequential([
        keras.Input((6, 6, 3)),
        lq.layers.QuantConv2D(4, 3, padding="same", pad_values=1.0,
                              input_quantizer=lq.quantizers.SteSign(),
                              kernel_quantizer=lq.quantizers.SteSign(), kernel_constraint=c),
        keras.layers.Flatten(),
        lq.layers.QuantDense(3, input_quantizer=lq.quantizers.ApproxSign(),
                             kernel_quantizer=lq.quantizers.DoReFa(k_bit=2, mode="weights")),
    ])
    x = _inputs((2, 6, 6, 3), seed=10)
    y = model.predict(x, verbose=0)
    model.save(tmp_path / f"larq.{fmt}")
    assert type(keras.models.load_model(tmp_path / f"larq.{fmt}").layers[0]) is \
        lq.layers.QuantConv2D  # Larq's names stay Larq's for Larq's own loading
    reloaded = models.load_model(tmp_path / f"larq.{fmt}")
    assert type(reloaded.layers[0]) is bl.QuantConv2D
    assert type(reloaded.layers[2]) is bl.QuantDense
    assert reloaded.layers[0].pad_values == 1.0
    assert isinstance(reloaded.layers[2].kernel_quantizer, bq.DoReFa)
    np.testing.assert_array_equal(reloaded.predict(x, verbose=0), y)


# ---------------------------------------------------------------------------------------
# Examples from the documentation, training, quantized weights
# ---------------------------------------------------------------------------------------


def test_key_concepts_example_builds_and_predicts():
    model = keras.Sequential([
        keras.layers.Flatten(input_shape=(28, 28)),
        bl.QuantDense(512, activation="relu"),
        bl.QuantDense(10, activation="softmax"),
    ])
    assert model.count_params() == 28 * 28 * 512 + 512 + 512 * 10 + 10
    y = model.predict(np.random.default_rng(0).random((4, 28, 28), dtype=F32), verbose=0)
    assert y.shape == (4, 10)
    np.testing.assert_allclose(y.sum(axis=1), 1.0, rtol=1e-5)


def test_tiny_bnn_trains():
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    direction = rng.normal(size=16).astype(F32)
    x = rng.normal(size=(256, 16)).astype(F32)
    labels = (x @ direction > 0).astype("int32")
    from bnn_cli.constraints import WeightClip  # (Larq's example uses weight clipping)

    constraint = WeightClip(1.0)
    model = keras.Sequential([
        keras.Input((16,)),
        bl.QuantDense(32, kernel_quantizer="ste_sign", kernel_constraint=constraint,
                      use_bias=False),
        keras.layers.BatchNormalization(momentum=0.9),
        bl.QuantDense(2, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                      kernel_constraint=constraint, use_bias=False),
        keras.layers.BatchNormalization(momentum=0.9),
        keras.layers.Activation("softmax"),
    ])
    model.compile(keras.optimizers.Adam(0.01), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, labels, epochs=8, batch_size=32, verbose=0)
    losses = history.history["loss"]
    assert losses[-1] < 0.7 * losses[0], losses
    assert history.history["accuracy"][-1] > 0.8
    for layer in (model.layers[0], model.layers[2]):
        kernel = layer.quantized_weights()["kernel"].numpy()
        assert set(np.unique(kernel)) <= {-1.0, 1.0}
        assert kernel.shape == layer.kernel.shape
        # The constraint keeps the latent weights where the STE passes gradients.
        assert np.abs(layer.kernel.numpy()).max() <= 1.0 + 1e-6
        assert layer.kernel.precision == 1


def test_quantized_weights():
    dense = bl.QuantDense(3, kernel_quantizer=bq.DoReFa(k_bit=2, mode="weights"))
    dense.build((None, 4))
    expected = bq.DoReFa(k_bit=2, mode="weights")(dense.kernel).numpy()
    np.testing.assert_array_equal(dense.quantized_weights()["kernel"].numpy(), expected)
    assert dense.kernel.precision == 2
    separable = bl.QuantSeparableConv2D(2, 3, depthwise_quantizer="ste_sign",
                                        pointwise_quantizer="ste_sign")
    separable.build((None, 5, 5, 3))
    qw = separable.quantized_weights()
    assert set(qw) == {"depthwise_kernel", "pointwise_kernel"}
    for value in qw.values():
        assert set(np.unique(value.numpy())) <= {-1.0, 1.0}
    plain = bl.QuantDense(2)
    plain.build((None, 3))
    np.testing.assert_array_equal(plain.quantized_weights()["kernel"].numpy(),
                                  plain.kernel.numpy())
    # The latent variable stays trainable and is the one the optimizer updates.
    assert dense.trainable_weights[0] is dense.kernel


def test_learned_shift_adds_a_learned_shift_per_channel(tmp_path):
    """ReActNet's LearnableBias: y = x + b per channel; b starts at zero, is trained,
    saved and loaded, and counts as a `shifts` variable for weight decay by kind."""
    import numpy as np

    from bnn_cli._keras import keras, tf
    from bnn_cli.assemble.model import weight_kind
    from bnn_cli.layers import LearnedShift
    from bnn_cli.models import load_model

    x = np.random.default_rng(0).normal(size=(2, 3, 3, 4)).astype("float32")
    layer = LearnedShift(name="shift")
    model = keras.Sequential([keras.Input((3, 3, 4)), layer])
    np.testing.assert_array_equal(model(x).numpy(), x)
    layer.shift.assign([1.0, -2.0, 0.5, 0.0])
    np.testing.assert_allclose(model(x).numpy(), x + [1.0, -2.0, 0.5, 0.0])
    assert weight_kind(layer.shift) == "shifts"
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(model(x))
    np.testing.assert_allclose(tape.gradient(loss, layer.shift).numpy(), [18.0] * 4)
    model.save(tmp_path / "m.keras")
    np.testing.assert_allclose(load_model(tmp_path / "m.keras")(x).numpy(),
                               model(x).numpy())
    assert LearnedShift.from_config(layer.get_config()).shift_initializer.__class__ \
        is layer.shift_initializer.__class__
