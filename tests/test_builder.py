"""YAML model specs -> Keras models: sequential, graphs, blocks, repeat, defaults."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import dataset_for

from bnn_cli import quantizers
from bnn_cli.assemble.check import check
from bnn_cli.assemble.model import build_model
from bnn_cli.config.schema import ConfigError
from bnn_cli.constraints import WeightClip
from bnn_cli.layers import QuantConv2D, QuantDense

ROOT = Path(__file__).resolve().parents[1]


def build(tmp_path: Path, text: str, *overrides: str):
    path = tmp_path / "model.yaml"
    path.write_text(text)
    return build_model(check(path, overrides))


def layers_of(model, cls):
    return [layer for layer in model.layers if isinstance(layer, cls)]


def test_sequential_with_defaults_and_component_arguments(tmp_path):
    model = build(tmp_path, """
model:
  inputs: [{shape: [8, 8, 1]}]
  defaults:
    QuantConv2D: {kernel_quantizer: ste_sign, kernel_constraint: weight_clip,
                  input_quantizer: {type: SteSign, clip_value: 1.25}}
  layers:
    - {type: QuantConv2D, filters: 4, kernel_size: 3, input_quantizer: null}
    - {type: QuantConv2D, filters: 4, kernel_size: 3, padding: same, pad_values: 1.0}
    - {type: Flatten}
    - {type: Dense, units: 3, activation: ste_sign, kernel_initializer: {type: Constant,
       value: 0.5}, kernel_regularizer: {type: L2, l2: 0.01}}
""")
    first, second = layers_of(model, QuantConv2D)
    assert first.input_quantizer is None
    assert isinstance(second.input_quantizer, quantizers.SteSign)
    assert second.input_quantizer.clip_value == 1.25
    assert isinstance(second.kernel_quantizer, quantizers.SteSign)
    assert isinstance(second.kernel_constraint, WeightClip)
    assert second.pad_values == 1.0
    dense = model.layers[-1]
    np.testing.assert_array_equal(dense.kernel.numpy(), 0.5)
    out = model(np.random.randn(2, 8, 8, 1).astype("float32")).numpy()
    assert set(np.unique(out)) <= {-1.0, 1.0}


def test_residual_block_repeated(tmp_path):
    model = build(tmp_path, """
model:
  inputs: [{shape: [8, 8, 4]}]
  blocks:
    res:
      params: {filters: null, kernel: 3}
      layers:
        - {type: QuantConv2D, name: conv, filters: "${filters}", kernel_size: "${kernel}",
           padding: same, kernel_quantizer: ste_sign, kernel_constraint: weight_clip}
        - {type: BatchNormalization, name: bn}
        - {type: Add, name: add, inputs: [input, bn]}
  layers:
    - {block: res, name: stage, filters: 4, repeat: 3}
    - {type: GlobalAveragePooling2D}
""")
    adds = [layer for layer in model.layers if type(layer).__name__ == "Add"]
    assert [a.name for a in adds] == ["stage_1_add", "stage_2_add", "stage_3_add"]
    # Each Add takes the block input (the previous block's output) and its own BN.
    assert {t.node.layer.name for t in adds[1].input} == {"stage_1_add", "stage_2_bn"}
    assert all(c.kernel_size == (3, 3) for c in layers_of(model, QuantConv2D))


def test_graph_with_concatenation_and_two_inputs(tmp_path):
    model = build(tmp_path, """
model:
  inputs: [{name: image, shape: [6]}, {name: extra, shape: [2]}]
  layers:
    - {type: Dense, name: a, units: 4, inputs: image}
    - {type: Dense, name: b, units: 3, inputs: image}
    - {type: Concatenate, name: cat, inputs: [a, b, extra]}
    - {type: QuantDense, name: head, units: 2}
  outputs: [head, a]
training: {monitor: val_head_accuracy}  # two outputs: Keras logs metrics per output
""")
    assert [i.name for i in model.inputs] == ["image", "extra"]
    assert model.get_layer("cat").output.shape[-1] == 9
    assert [o.shape[-1] for o in model.outputs] == [2, 4]


def test_overrides_change_the_model(tmp_path):
    model = build(tmp_path, """
model:
  inputs: [{shape: [4]}]
  layers: [{type: QuantDense, units: 3}]
""", "model.layers[0].units=5", "model.layers[0].kernel_quantizer=ste_tern")
    layer = layers_of(model, QuantDense)[0]
    assert layer.units == 5 and isinstance(layer.kernel_quantizer, quantizers.SteTern)


def test_shipped_bireal_config_has_residual_structure(tmp_path):
    with dataset_for("cifar10", tmp_path) as data_dir:  # random CIFAR-10 examples
        model = build_model(check(ROOT / "configs" / "birealnet_cifar10.yaml",
                                  data_dir=data_dir))
    adds = [layer for layer in model.layers if type(layer).__name__ == "Add"]
    assert len(adds) == 4 + 1 + 3 + 1 + 3
    assert model.output_shape == (None, 10)


def test_block_error_names_block_and_use(tmp_path):
    with pytest.raises(ConfigError) as info:
        build(tmp_path, """
model:
  inputs: [{shape: [4]}]
  blocks:
    b:
      params: {units: null}
      layers: [{type: Dense, units: "${units}", kernel_quantizer: ste_sign}]
  layers: [{block: b, units: 3}]
""")
    message = str(info.value)
    assert "model.blocks.b.layers[0].kernel_quantizer" in message
    assert "layer Dense has no argument 'kernel_quantizer'" in message
    assert "in block 'b' used at model.layers[0]" in message
