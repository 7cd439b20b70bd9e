"""Deployability on the Larq Compute Engine: each converter rule flips a layer's verdict,
the prediction matches the converted file on every shipped config, and a file that
differs is reported by layer name."""

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import QUICKSTART, ROOT, dataset_for, train_tiny

import bnn_cli as bnn
from bnn_cli._keras import keras, tf
from bnn_cli.assemble.deployability import is_binary_filter, lce_report
from bnn_cli.cli import main
from bnn_cli.deploy.lce_check import compare_with_file

CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
BINARY = dict(input_quantizer="ste_sign", kernel_quantizer="ste_sign",
              kernel_constraint="weight_clip")


def lce():
    return pytest.importorskip("larq_compute_engine", reason="the optional "
                               "larq-compute-engine package is not installed")


def verdict_of(layer, shape=(8, 8, 32)):
    """The verdict of ``layer`` alone in a model on inputs of ``shape``."""
    inp = keras.Input(shape)
    (verdict,) = lce_report(keras.Model(inp, layer(inp))).layers
    return verdict


def rules(findings) -> list[str]:
    return [f.rule for f in findings]


# ---------------------------------------------------------------------------------------
# Each rule flips the verdict, with its reason and fix.
# ---------------------------------------------------------------------------------------


def test_same_padding_needs_pad_values_one_for_full_speed():
    ones = verdict_of(bnn.layers.QuantConv2D(32, 3, padding="same", pad_values=1.0, **BINARY))
    assert ones.binary and ones.op == "LceBconv2d" and not ones.advice
    zeros = verdict_of(bnn.layers.QuantConv2D(32, 3, padding="same", **BINARY))
    assert zeros.binary  # arm accepts it, with a correction step
    (advice,) = zeros.advice
    assert advice.rule == "padding" and "correction" in advice.reason
    assert advice.fix == "set pad_values: 1"
    other = verdict_of(bnn.layers.QuantConv2D(32, 3, padding="same", pad_values=-1.0,
                                              **BINARY))
    assert not other.binary and rules(other.blockers) == ["padding"]
    assert "pad_values -1" in other.blockers[0].reason
    assert verdict_of(bnn.layers.QuantConv2D(32, 3, padding="valid", **BINARY)).advice == []


@pytest.mark.parametrize("quantizer", ["ste_sign", "approx_sign", "swish_sign"])
def test_sign_input_quantizers_are_binary(quantizer):
    verdict = verdict_of(bnn.layers.QuantConv2D(32, 3, **{**BINARY,
                                                         "input_quantizer": quantizer}))
    assert verdict.binary, verdict.blockers


@pytest.mark.parametrize(("quantizer", "gives"), [
    ("ste_heaviside", "{0, 1}, 0 at 0"),
    ("ste_tern", "{-1, 0, 1}, 0 at 0"),
    ("dorefa_quantizer", "{0, 0.666667, 1}, 0 at 0"),  # 2 bits
])
def test_input_quantizers_that_are_not_the_sign(quantizer, gives):
    verdict = verdict_of(bnn.layers.QuantConv2D(32, 3, **{**BINARY,
                                                         "input_quantizer": quantizer}))
    assert not verdict.binary and verdict.op == "CONV_2D"
    (blocker,) = verdict.blockers
    assert blocker.rule == "input_quantizer" and gives in blocker.reason
    assert "ste_sign" in blocker.fix


def test_no_input_quantizer_means_real_inputs():
    verdict = verdict_of(bnn.layers.QuantConv2D(32, 3, kernel_quantizer="ste_sign"))
    assert rules(verdict.blockers) == ["input_quantizer"]
    assert "real-valued" in verdict.blockers[0].reason


def test_a_sign_layer_before_binarizes_the_input_too():
    inp = keras.Input((8, 8, 32))
    x = keras.layers.Activation("ste_sign")(inp)
    out = bnn.layers.QuantConv2D(32, 3, kernel_quantizer="ste_sign")(x)
    (verdict,) = lce_report(keras.Model(inp, out)).layers
    assert verdict.binary


@pytest.mark.parametrize(("kernel_quantizer", "binary"), [
    ("ste_sign", True),
    ("magnitude_aware_sign", True),  # +-scale per output channel
    ({"class_name": "DoReFa", "config": {"k_bit": 1, "mode": "weights"}}, True),
    ("ste_tern", False),
    (None, False),
])
def test_kernel_must_be_plus_minus_scale_per_channel(kernel_quantizer, binary):
    verdict = verdict_of(bnn.layers.QuantConv2D(32, 3, input_quantizer="ste_sign",
                                                kernel_quantizer=kernel_quantizer))
    assert verdict.binary is binary
    if not binary:
        assert rules(verdict.blockers) == ["kernel_quantizer"]
        assert "not +-1 or +-scale per output channel" in verdict.blockers[0].reason
        assert "magnitude_aware_sign" in verdict.blockers[0].fix


def test_binary_filter_tolerance_is_lces():
    kernel = np.where(np.random.default_rng(0).normal(size=(3, 3, 4, 2)) < 0, -1.0, 1.0)
    assert is_binary_filter(kernel * [0.5, 2.0])
    assert is_binary_filter(kernel * (1 + 0.004 * (kernel > 0)))
    assert not is_binary_filter(kernel * (1 + 0.01 * (kernel > 0)))
    assert not is_binary_filter(kernel * [0.0, 1.0])


def test_dense_is_better_a_1x1_convolution():
    verdict = verdict_of(bnn.layers.QuantDense(16, **BINARY), shape=(64,))
    assert not verdict.binary and verdict.op == "FULLY_CONNECTED"
    assert rules(verdict.blockers) == ["layer_type"]
    assert "1x1 QuantConv2D" in verdict.blockers[0].fix


@pytest.mark.parametrize(("layer", "op"), [
    (bnn.layers.QuantDepthwiseConv2D(3, input_quantizer="ste_sign",
                                     depthwise_quantizer="ste_sign"), "DEPTHWISE_CONV_2D"),
    (bnn.layers.QuantConv2DTranspose(32, 3, **BINARY), "float"),
])
def test_only_2d_convolutions_are_binary(layer, op):
    verdict = verdict_of(layer)
    assert not verdict.binary and verdict.op == op
    assert rules(verdict.blockers)[0] == "layer_type"


def test_grouped_convolution_needs_32_channels_per_group():
    assert verdict_of(bnn.layers.QuantConv2D(32, 3, groups=2, **BINARY),
                      shape=(8, 8, 64)).binary
    verdict = verdict_of(bnn.layers.QuantConv2D(32, 3, groups=2, **BINARY))
    assert rules(verdict.blockers) == ["groups"] and "16 input channels" in \
        verdict.blockers[0].reason


def test_channel_advice():
    verdict = verdict_of(bnn.layers.QuantConv2D(12, 3, **BINARY), shape=(8, 8, 40))
    assert verdict.binary
    assert rules(verdict.advice) == ["channels_in", "channels_out"]
    assert "40 input channels are bitpacked as 64" in verdict.advice[0].reason
    assert "multiple of 8" in verdict.advice[1].fix


# ---------------------------------------------------------------------------------------
# The prediction against converted files.
# ---------------------------------------------------------------------------------------


def shipped_model(config: Path, tmp_path):
    from bnn_cli.assemble.check import check
    from bnn_cli.assemble.model import build_model

    dataset = yaml.safe_load(config.read_text())["data"]["dataset"]
    with dataset_for(dataset, tmp_path) as data_dir:
        return build_model(check(config, data_dir=data_dir))


EXPECTED_BINARY = {"quickstart": 2, "larq_mnist": 2, "binarynet_cifar10": 5,
                   "birealnet_cifar10": 12, "seed_dense": 0, "mnist_bnn": 5,
                   "fashion_mnist_bnn": 5, "mnist_bnn_fast": 3, "fashion_mnist_bnn_fast": 3}


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_prediction_matches_the_converted_file(config, tmp_path):
    """The issue's done-criterion, on every shipped config."""
    from bnn_cli.deploy.export import inference_model
    from bnn_cli.deploy.runtimes import lce_operators

    model = shipped_model(config, tmp_path)
    flatbuffer = lce().convert_keras_model(inference_model(model))
    result = compare_with_file(model, flatbuffer)
    assert result.agrees, result.warning()
    assert result.found == result.predicted  # (and in model order)
    assert len(result.found) == EXPECTED_BINARY[config.stem]
    assert len(result.found) == sum(op.type == "LceBconv2d"
                                    for op in lce_operators(flatbuffer))


@tf.custom_gradient
def _cast_sign(x):
    """+-1 like ste_sign, but computed as 2 * (x >= 0) - 1: a graph the converter does
    not recognize as a binarizer."""
    return 2.0 * tf.cast(x >= 0, tf.float32) - 1.0, lambda dy: dy


bnn.quantizers.register_quantizer(_cast_sign, name="test_cast_sign", precision=1)


def test_a_file_that_differs_is_reported_by_layer():
    from bnn_cli.deploy.export import inference_model

    inp = keras.Input((8, 8, 32))
    x = bnn.layers.QuantConv2D(32, 3, name="fused", **BINARY)(inp)
    x = bnn.layers.QuantConv2D(32, 3, name="unfused", **{**BINARY,
                                                         "input_quantizer": "test_cast_sign"})(x)
    model = keras.Model(inp, x)
    assert lce_report(model).binary_layers == ["fused", "unfused"]  # numerically a sign
    result = compare_with_file(model, lce().convert_keras_model(inference_model(model)))
    assert result.found == ["fused"] and result.missing == ["unfused"]
    assert result.unexpected == [] and "unfused" in result.warning()


def test_a_file_of_another_model_is_reported(tmp_path):
    from bnn_cli.deploy.export import inference_model

    model = shipped_model(QUICKSTART, tmp_path)
    other = keras.models.clone_model(model)  # same layers, fresh (different) kernels
    result = compare_with_file(model, lce().convert_keras_model(inference_model(other)))
    assert result.missing == ["quant_conv2d_1", "quant_conv2d_2"]
    assert result.unexpected == ["<unknown LceBconv2d #0>", "<unknown LceBconv2d #1>"]


# ---------------------------------------------------------------------------------------
# The commands.
# ---------------------------------------------------------------------------------------


def run(capsys, *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_check_target_lce_prints_the_table(capsys):
    code, out, err = run(capsys, "check", str(QUICKSTART), "--target", "lce")
    assert code == 0, err
    assert "LCE deployability: 2 of 5 quantized layers become binary LceBconv2d" in out
    assert "quant_conv2d_1  QuantConv2D  LceBconv2d" in out
    assert "quant_dense     QuantDense   FULLY_CONNECTED (float)" in out
    assert "fix: write it as a 1x1 QuantConv2D" in out and out.rstrip().endswith("OK")


def test_check_target_lce_json(capsys):
    code, out, _ = run(capsys, "check", str(QUICKSTART), "--target", "lce", "--json")
    assert code == 0
    report = json.loads(out)["deployability"]
    assert report["target"] == "lce"
    assert report["binary_layers"] == ["quant_conv2d_1", "quant_conv2d_2"]
    first = report["layers"][0]
    assert first["binary"] is False and first["reasons"][0]["rule"] == "input_quantizer"
    assert "deployability" not in json.loads(run(capsys, "check", str(QUICKSTART),
                                                 "--json")[1])


def test_check_target_lce_needs_no_lce(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "larq_compute_engine", None)  # import fails
    code, out, err = run(capsys, "check", str(QUICKSTART), "--target", "lce")
    assert code == 0, err
    assert "2 of 5 quantized layers become binary" in out


def test_check_unknown_target_exits_2(capsys):
    code, out, err = run(capsys, "check", str(QUICKSTART), "--target", "foo")
    assert code == 2 and out == ""
    assert "unknown deployment target 'foo'; use --target lce" in err
    assert "Traceback" not in err


def test_export_lce_compares_the_file(tmp_path, capsys):
    lce()
    trained = train_tiny(tmp_path / "runs")
    code, out, err = run(capsys, "export", str(trained), "--format", "lce", "--json")
    assert code == 0, err
    report = json.loads(out)
    expected = ["quant_conv2d_1", "quant_conv2d_2"]
    assert report["binary_ops"] == {"predicted": expected, "found": expected,
                                    "missing": [], "unexpected": []}
    stored = json.loads(Path(report["check_file"]).read_text())
    assert stored["binary_ops"] == report["binary_ops"] and "warning" not in err
    code, out, _ = run(capsys, "export", str(trained), "--format", "lce")
    assert code == 0
    assert ("binary operations: 2 LceBconv2d (quant_conv2d_1, quant_conv2d_2), as `bnn "
            "check --target lce` predicted") in out


ZOO = sorted((ROOT / "configs" / "zoo").glob("*.yaml"))


@pytest.mark.slow
@pytest.mark.parametrize("config", ZOO, ids=[c.stem for c in ZOO])
def test_prediction_matches_the_converted_file_for_the_zoo(config):
    """The same criterion on the zoo's ImageNet-size networks (ImageNet is not
    prepared here: the model is checked and built from its given input shape)."""
    from bnn_cli.assemble.check import check
    from bnn_cli.assemble.model import build_model
    from bnn_cli.deploy.export import inference_model

    model = build_model(check(config, allow_unprepared_data=True))
    flatbuffer = lce().convert_keras_model(inference_model(model))
    result = compare_with_file(model, flatbuffer)
    assert result.agrees, result.warning()
    assert result.found == result.predicted
