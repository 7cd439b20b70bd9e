"""Model summaries: the same tables and figures as ``larq.models.summary``.

Each model is built twice, with Larq's layers and quantizers and with bnn_cli's (same
layer names), and the figures come from Larq's own profiler (``larq.models.ModelProfile``,
what ``larq.models.summary`` prints), not from parsing its text.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bnn_cli import constraints, layers, models, quantizers
from bnn_cli._keras import keras

lq = pytest.importorskip(
    "larq", reason="Larq, the reference these tests compare with, is a test extra")

ZOO_REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "zoo" / "reference.json"


class _Lib:
    """The layers and quantizers of one library, under common names."""

    def __init__(self, name: str):
        self.name = name
        source = lq if name == "larq" else None
        self.layers = source.layers if source else layers
        self.quantizers = source.quantizers if source else quantizers
        self.clip = (lq.constraints if source else constraints).WeightClip

    def sign(self):
        return self.quantizers.SteSign()

    def dorefa(self, k_bit: int, mode: str = "activations"):
        return self.quantizers.DoReFa(k_bit=k_bit, mode=mode)


def mnist_model(lib: _Lib) -> keras.Model:
    """Larq's MNIST example network."""
    L = lib.layers

    def binary():
        return {"input_quantizer": lib.sign(), "kernel_quantizer": lib.sign(),
                "kernel_constraint": lib.clip(), "use_bias": False}

    bn = keras.layers.BatchNormalization
    return keras.Sequential([
        L.QuantConv2D(32, (3, 3), kernel_quantizer=lib.sign(), kernel_constraint=lib.clip(),
                      use_bias=False, input_shape=(28, 28, 1), name="conv1"),
        keras.layers.MaxPooling2D((2, 2), name="pool1"),
        bn(scale=False, name="bn1"),
        L.QuantConv2D(64, (3, 3), name="conv2", **binary()),
        keras.layers.MaxPooling2D((2, 2), name="pool2"),
        bn(scale=False, name="bn2"),
        L.QuantConv2D(64, (3, 3), name="conv3", **binary()),
        bn(scale=False, name="bn3"),
        keras.layers.Flatten(name="flatten"),
        L.QuantDense(64, name="dense1", **binary()),
        bn(scale=False, name="bn4"),
        L.QuantDense(10, name="dense2", **binary()),
        bn(scale=False, name="bn5"),
        keras.layers.Activation("softmax", name="softmax"),
    ], name="mnist")


def mixed_model(lib: _Lib) -> keras.Model:
    """DoReFa 2- and 4-bit, ternary, depthwise and separable convolutions, 1D layers."""
    L = lib.layers
    inputs = keras.Input((12, 12, 3), name="image")
    x = L.QuantConv2D(8, 3, kernel_quantizer=lib.dorefa(2, "weights"), name="conv")(inputs)
    x = keras.layers.BatchNormalization(center=False, name="bn")(x)
    x = L.QuantDepthwiseConv2D(3, padding="same", input_quantizer=lib.dorefa(2),
                               depthwise_quantizer=lib.dorefa(2, "weights"), name="dw")(x)
    x = L.QuantSeparableConv2D(16, 3, input_quantizer=lib.sign(),
                               depthwise_quantizer=lib.sign(), pointwise_quantizer=lib.sign(),
                               depthwise_constraint=lib.clip(),
                               pointwise_constraint=lib.clip(), name="sep")(x)
    x = keras.layers.AveragePooling2D(name="avg")(x)
    x = keras.layers.Reshape((16, 16), name="reshape")(x)
    x = L.QuantConv1D(6, 3, input_quantizer=lib.quantizers.SteTern(),
                      kernel_quantizer=lib.quantizers.SteTern(), name="conv1d")(x)
    x = L.QuantSeparableConv1D(6, 3, input_quantizer=lib.sign(), depthwise_quantizer=lib.sign(),
                               pointwise_quantizer=lib.sign(), depthwise_constraint=lib.clip(),
                               pointwise_constraint=lib.clip(), name="sep1d")(x)
    x = keras.layers.MaxPool1D(name="maxpool1d")(x)
    x = keras.layers.GlobalAveragePooling1D(name="gap")(x)
    outputs = L.QuantDense(10, input_quantizer=lib.dorefa(4),
                           kernel_quantizer=lib.dorefa(4, "weights"), name="head")(x)
    return keras.Model(inputs, outputs, name="mixed")


def plain_model(lib: _Lib) -> keras.Model:
    """A Keras model without quantizers (the same for both libraries)."""
    inputs = keras.Input((10, 10, 2), name="image")
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    x = keras.layers.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
    x = keras.layers.Conv2DTranspose(3, 2, strides=2, name="up")(x)
    x = keras.layers.BatchNormalization(scale=False, center=False, name="bn_bare")(x)
    x = keras.layers.MaxPool2D(name="pool")(x)
    x = keras.layers.Flatten(name="flatten")(x)
    x = keras.layers.Dropout(0.5, name="dropout")(x)
    outputs = keras.layers.Dense(5, activation="softmax", name="dense")(x)
    return keras.Model(inputs, outputs, name="plain")


def nested_model(lib: _Lib) -> keras.Model:
    """A binary Sequential block inside a functional model."""
    block = keras.Sequential([
        lib.layers.QuantDense(16, input_quantizer=lib.sign(), kernel_quantizer=lib.sign(),
                              kernel_constraint=lib.clip(), input_shape=(8,), name="inner"),
        keras.layers.BatchNormalization(name="inner_bn"),
    ], name="block")
    inputs = keras.Input((8,), name="features")
    x = keras.layers.Dense(8, name="stem")(inputs)
    x = block(x)
    outputs = keras.layers.Dense(2, name="head")(x)
    return keras.Model(inputs, outputs, name="nested")


MODELS = [mnist_model, mixed_model, plain_model, nested_model]


def _larq_figures(model: keras.Model) -> dict:
    """What ``larq.models.summary`` prints, from Larq's profiler."""
    profile = lq.models.ModelProfile(model)
    return {
        "params_by_bitwidth": {b: profile.weight_count(b)
                               for b in profile.unique_param_bidtwidths},
        "macs_by_precision": {p: profile.op_count("mac", p)
                              for p in profile.unique_op_precisions},
        "total_params": profile.weight_count(),
        "trainable_params": profile.weight_count(trainable=True),
        "non_trainable_params": profile.weight_count(trainable=False),
        "memory_bits": profile.memory,
        "int8_fp_weights_memory_bits": profile.int8_fp_weights_memory,
        "fp32_equivalent_memory_bits": profile.fp_equivalent_memory,
        "total_macs": profile.op_count("mac"),
        "layers": [(lp.name, lp.input_precision, lp.output_shape_str, lp.memory)
                   for lp in profile.layer_profiles],
    }


def _our_figures(model: keras.Model) -> dict:
    data = models.summary_data(model)
    return {
        "params_by_bitwidth": data.params_by_bitwidth,
        "macs_by_precision": data.macs_by_precision,
        "total_params": data.total_params,
        "trainable_params": data.trainable_params,
        "non_trainable_params": data.non_trainable_params,
        "memory_bits": data.memory_bits,
        "int8_fp_weights_memory_bits": data.int8_fp_weights_memory_bits,
        "fp32_equivalent_memory_bits": data.fp32_equivalent_memory_bits,
        "total_macs": data.total_macs,
        "layers": [(lp.name, lp.input_precision, lp.output_shape_str, lp.memory_bits)
                   for lp in data.layers],
    }


def _printed(summary_fn, model: keras.Model, **kwargs) -> list[str]:
    tables: list[str] = []
    summary_fn(model, print_fn=tables.append, **kwargs)
    return tables


@pytest.fixture(scope="module", params=MODELS, ids=lambda f: f.__name__)
def model_pair(request) -> tuple[keras.Model, keras.Model]:
    """(Larq's model, bnn_cli's model) of one architecture."""
    return request.param(_Lib("larq")), request.param(_Lib("bnn"))


def test_figures_equal_larq(model_pair):
    ref, ours = model_pair
    assert _our_figures(ours) == _larq_figures(ref)


def test_printed_tables_equal_larq(model_pair):
    ref, ours = model_pair
    assert _printed(models.summary, ours) == _printed(lq.models.summary, ref)


def test_larq_profiles_bnn_cli_model_alike(model_pair):
    # Larq's profiler only duck-types `precision` and `input_quantizer`, so it reads
    # bnn_cli's model too: a check of the tags bnn_cli's layers put on their variables.
    _, ours = model_pair
    assert _larq_figures(ours) == _our_figures(ours)


def test_mnist_figures():
    data = models.summary_data(mnist_model(_Lib("bnn")))
    assert data.params_by_bitwidth == {1: 93088, 32: 468}
    assert data.macs_by_precision == {1: 2599552, 32: 194688}
    assert data.memory_bits == 93088 + 32 * 468
    assert data.binarized_mac_ratio == pytest.approx(2599552 / (2599552 + 194688))
    assert data.count_params == 93790  # Keras's count keeps batch norm's beta
    text = data.to_text()
    assert "| Ratio of MACs that are binarized  0.9303     |" in text
    assert "Float-32 Equivalent               365.45 KiB" in text


def test_mixed_model_has_ternary_and_multi_bit_columns():
    data = models.summary_data(mixed_model(_Lib("bnn")))
    assert set(data.params_by_bitwidth) == {1, 2, 4, 32}
    assert set(data.macs_by_precision) == {1, 2, 4, 32}
    assert data.ternarized_mac_ratio > 0
    rows = {lp.name: lp for lp in data.layers}
    assert rows["gap"].macs_by_precision is None  # not counted: "?"
    assert rows["dw"].input_precision == 2
    text = data.to_text()
    assert "Ratio of MACs that are ternarized" in text
    assert "# 4-bit" in text and "4-bit MACs" in text


def test_include_macs_false_drops_mac_columns():
    ref, ours = mnist_model(_Lib("larq")), mnist_model(_Lib("bnn"))
    stats, totals = _printed(models.summary, ours, include_macs=False)
    # Deliberate difference: Larq keeps the MAC columns in the layer table.
    assert "MACs" not in stats
    assert totals == _printed(lq.models.summary, ref, include_macs=False)[1]


def test_unknown_spatial_size_leaves_macs_unknown():
    inputs = keras.Input((None, None, 3))
    x = layers.QuantConv2D(4, 3, input_quantizer="ste_sign", kernel_quantizer="ste_sign",
                           kernel_constraint="weight_clip", name="conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(2, name="dense")(x)
    data = models.summary_data(keras.Model(inputs, outputs))
    rows = {lp.name: lp for lp in data.layers}
    assert rows["conv"].macs_by_precision is None
    assert rows["dense"].macs_by_precision == {32: 8}
    assert data.macs_by_precision == {32: 8}


def test_summary_data_is_json_able():
    data = models.summary_data(nested_model(_Lib("bnn")))
    as_dict = json.loads(json.dumps(data.as_dict()))
    # stem 8*8+8; inner bias 16 + batch-norm statistics 2*16 (beta, gamma folded); head 16*2+2
    assert as_dict["params_by_bitwidth"] == {"1": 128, "32": 72 + 48 + 34}
    assert as_dict["layers"][2]["name"] == "block"
    assert as_dict["layers"][2]["macs_by_precision"] == {"1": 128}
    assert as_dict["compression_ratio"] == pytest.approx(data.compression_ratio)


def test_unbuilt_model_is_an_error():
    model = keras.Sequential([layers.QuantDense(3)])
    with pytest.raises(ValueError, match="not yet been built"):
        models.summary(model)


def _larq_reference_figures(model: keras.Model) -> dict:
    """The figures of reference.json, computed the way its README describes."""
    profile = lq.models.ModelProfile(model)
    count = lambda weights: int(sum(np.prod(w.shape) for w in weights))  # noqa: E731
    return {
        "count_params": model.count_params(),
        "trainable": count(model.trainable_weights),
        "non_trainable": count(model.non_trainable_weights),
        "summary_params_by_bitwidth": {str(b): profile.weight_count(b)
                                       for b in profile.unique_param_bidtwidths},
        "macs_by_precision": {str(p): profile.op_count("mac", p)
                              for p in profile.unique_op_precisions},
        "memory_bits": profile.memory,
        "input_shape": list(model.input_shape[1:]),
        "output_shape": list(model.output_shape[1:]),
        "num_layers": len(model.layers),
    }


@pytest.mark.parametrize("build", MODELS, ids=lambda f: f.__name__)
def test_reference_figures_equal_larq(build):
    ref, ours = build(_Lib("larq")), build(_Lib("bnn"))
    assert models.summary_data(ours).reference_figures() == _larq_reference_figures(ref)


@pytest.mark.skipif(not ZOO_REFERENCE.exists(), reason="no zoo reference figures")
def test_reference_figures_match_zoo_reference_format():
    reference = json.loads(ZOO_REFERENCE.read_text())
    assert {"BinaryAlexNet", "BiRealNet"} <= set(reference)
    figures = models.summary_data(mnist_model(_Lib("bnn"))).reference_figures()
    for name, expected in reference.items():
        assert set(expected) <= set(figures), name
        for key in ("summary_params_by_bitwidth", "macs_by_precision"):
            # Bit widths as string keys, counts as ints: comparable with `==`.
            assert all(k.isdigit() and isinstance(v, int) for k, v in expected[key].items())
        assert sum(map(int, expected["summary_params_by_bitwidth"].values())) <= \
            expected["count_params"], name


@pytest.mark.parametrize("value", [0, 1, 10, 100, 468, 999, 1000, 93588, 999_499, 999_500,
                                   2_599_552, 123_456_789, 10**15, 2.5e15])
def test_readable_numbers_equal_larq(value):
    from larq.models import _number_as_readable_str
    from larq.utils import memory_as_readable_str

    assert models._readable_number(value) == _number_as_readable_str(value)
    bits = int(value) * 8 + 3
    assert models._readable_memory(bits) == memory_as_readable_str(bits)
