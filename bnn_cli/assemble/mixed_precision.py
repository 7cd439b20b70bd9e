"""Mixed precision: ``runtime.mixed_precision: mixed_float16 | mixed_bfloat16 | auto``.

Keras's own mechanism (``keras.mixed_precision``): a model built under a mixed policy
computes in float16 or bfloat16 while its variables stay float32 (each layer reads its
float32 variables cast to the compute type). What training adds to Keras's defaults:

- The policy is set only while the model is built (:func:`policy`), and the previous
  one restored, so nothing built afterwards in the process inherits it.
- The layers whose outputs are the model's outputs compute in float32
  (:func:`float32_outputs`): a softmax in float16 can round probabilities to 0 or 1 and
  its cross-entropy to infinity; Keras's guide asks for a float32 final layer.
- ``mixed_float16`` needs loss scaling (small gradients underflow float16): Keras's
  ``Model.compile`` wraps the optimizer in a ``LossScaleOptimizer`` for a model of that
  policy; the training loop checkpoints that wrapper, so its dynamic loss scale resumes
  with the run. bfloat16 has float32's range and needs none.

Quantizers need nothing: their values (±1, the DoReFa levels) are exact in both types
and their pseudo-gradients are computed in the compute type (tests/test_mixed_precision.py
compares them with float32); the latent weights, the optimizer's state (Bop's moving
averages) and batch normalization's statistics stay float32.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Iterator

from bnn_cli._keras import keras
from bnn_cli.assemble.check import CheckedConfig
from bnn_cli.assemble.model import build_model as build

POLICIES = ("mixed_float16", "mixed_bfloat16")


@contextlib.contextmanager
def policy(name: str | None) -> Iterator[None]:
    """Keras's global dtype policy ``name`` (None: float32) while the block runs."""
    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name or "float32")
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def float32_outputs(checked: CheckedConfig) -> CheckedConfig:
    """``checked`` with its output layers computing in float32 (unless their config
    gives them a ``dtype``); the weights are the same, so checkpoints fit either way."""
    outputs = set(checked.graph.outputs)
    nodes = [dataclasses.replace(node, args={**node.args, "dtype": "float32"})
             if node.name in outputs and "dtype" not in node.args else node
             for node in checked.graph.nodes]
    return dataclasses.replace(checked, graph=dataclasses.replace(checked.graph, nodes=nodes))


def build_model(checked: CheckedConfig, name: str | None) -> keras.Model:
    """The model of ``checked`` under the policy ``name`` (None: float32)."""

    if name is None:
        with policy(None):
            return build(checked)
    with policy(name):
        return build(float32_outputs(checked))


def is_loss_scaled(optimizer: object) -> bool:
    return isinstance(optimizer, keras.mixed_precision.LossScaleOptimizer)


def inner(optimizer: object) -> object:
    """The optimizer a loss-scale wrapper trains with (or ``optimizer`` itself)."""
    return getattr(optimizer, "inner_optimizer", optimizer) if is_loss_scaled(optimizer) \
        else optimizer
