"""scripts/benchmark.py compares one network as Keras, Larq and bnn_cli layers: the
translations must be that same network (same weights in, same outputs out), or the
speed table compares different things."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from conftest import ROOT

pytest.importorskip("larq", reason="Larq is a test extra: pip install -e '.[test]'")
sys.path.insert(0, str(ROOT / "scripts"))

import benchmark  # noqa: E402


@pytest.mark.parametrize("config", ["configs/larq_mnist.yaml"])
def test_translations_are_the_same_network(config):
    model = benchmark.bnn_model(config)
    x = np.random.default_rng(0).uniform(-1, 1, (4, *model.input_shape[1:])).astype("float32")
    larq = benchmark.translate(model, "larq")
    larq.set_weights(model.get_weights())
    np.testing.assert_allclose(larq(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-6)
    assert {type(layer).__module__.split(".")[0] for layer in larq.layers
            if type(layer).__name__.startswith("Quant")} == {"larq"}
    # Full precision: the same layers without quantizers, so the outputs differ.
    keras_fp = benchmark.translate(model, "keras")
    assert keras_fp.count_params() == model.count_params()
    assert not any(type(layer).__name__.startswith("Quant") for layer in keras_fp.layers)
    keras_fp.set_weights(model.get_weights())
    assert not np.allclose(keras_fp(x).numpy(), model(x).numpy())


def test_table_has_the_ratios():
    results = {"step": {"net": {"batch": 8, "ms_per_step": {
        "keras (full precision)": 10.0, "larq": 12.0, "bnn": 12.0}}},
        "train": {"job": {"bnn train": {"epoch_s": 2.0, "peak_mib": 900},
                          "plain script": {"epoch_s": 2.2, "peak_mib": 1000}}}}
    text = benchmark.table(results)
    assert "| net (8) | bnn | 12.0 | 0.83x | 1.00x |" in text
    assert "| job | 2.00 s | 2.20 s | 1.10 | 900 / 1000 MiB |" in text


def test_epoch_time_is_the_median_gap_between_epoch_lines():
    # Lines at 0, 1, 3 and 4 s: epochs 2-4 took 1, 2 and 1 s (epoch 1 has no line
    # before it, and traces the step).
    assert benchmark._epoch_time({"epoch_ends": [0.0, 1.0, 3.0, 4.0]}) == 1.0
