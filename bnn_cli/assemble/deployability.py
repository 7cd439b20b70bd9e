"""Deployability: which quantized layers the Larq Compute Engine (LCE) converter turns
into binary operations, and whether a converted file agrees.

The rules follow the LCE 0.16 converter (``larq_compute_engine/mlir/transforms/``
``prepare_patterns_common.td``, ``prepare_patterns_target_arm.td`` and ``prepare_tf.cc``)
and its model optimization guide. A quantized layer becomes an ``LceBconv2d`` only when
the converter sees a TensorFlow ``Conv2D`` whose

- input comes straight from a sign binarizer (``-1 if x < 0 else +1``), or through a
  ``PadV2`` with the constant 1 (``padding: same`` with ``pad_values: 1``);
- filter is a constant of +-1, or +-scale per output channel (tolerance 0.005);
- layout is NHWC, padding VALID, SAME with pad value 1, or SAME with zeros (arm only,
  with a correction step); any strides and dilations; groups only with a multiple of 32
  input channels per group.

Nothing here needs LCE: the verdicts come from the layers themselves, so ``bnn check``
gives them anywhere. The binarizer and the kernel are tested on numbers, not names, so
custom quantizers are judged by what they compute. A numeric test cannot see *how* a
quantizer computes its sign (LCE recognizes only ``Select(cond, +-1)`` and
``sign(sign(x) + c)``); :func:`bnn_cli.deploy.lce_check.compare_with_file` catches
what the rules cannot foresee by reading the converted file.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bnn_cli import quantizers
from bnn_cli._keras import keras, tf
from bnn_cli.errors import UserError
from bnn_cli.layers import QuantizerMixin
from bnn_cli.quantizers import Quantizer

TARGETS = ("lce",)
BINARY_OP = "LceBconv2d"
_FILTER_TOLERANCE = 0.005  # |w / scale| may differ from 1 by this much (prepare_tf.cc)
BITPACK_WIDTH = 32  # LCE packs 32 channels into one int32


def check_target(target: str) -> None:
    """Refuse an unknown ``--target`` before any model is built."""
    if target not in TARGETS:
        raise UserError(f"unknown deployment target {target!r}; use --target "
                        f"{' | '.join(TARGETS)} (the Larq Compute Engine)")


# ---------------------------------------------------------------------------------------
# Verdicts.
# ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Finding:
    """One reason a layer is not binary, or one piece of advice, with its fix."""

    rule: str
    reason: str
    fix: str


@dataclass
class LayerVerdict:
    layer: str
    type: str
    op: str  # what the layer becomes: LceBconv2d, or the float operation
    blockers: list[Finding] = field(default_factory=list)  # why it is not binary
    advice: list[Finding] = field(default_factory=list)  # binary, but slower than it could

    @property
    def binary(self) -> bool:
        return not self.blockers

    def as_dict(self) -> dict[str, Any]:
        return {"layer": self.layer, "type": self.type, "binary": self.binary, "op": self.op,
                "reasons": [asdict(f) for f in self.blockers],
                "advice": [asdict(f) for f in self.advice]}


@dataclass
class Deployability:
    """Every quantized layer's verdict for a target, in model order."""

    target: str
    layers: list[LayerVerdict]

    @property
    def binary_layers(self) -> list[str]:
        return [v.layer for v in self.layers if v.binary]

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "binary_layers": self.binary_layers,
                "layers": [v.as_dict() for v in self.layers]}

    def lines(self) -> list[str]:
        """A text table, one row per quantized layer, its reasons and fixes below it."""
        header = ("layer", "type", "becomes")
        rows = [(v.layer, v.type, v.op if v.binary else f"{v.op} (float)") for v in self.layers]
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

        def line(cells: tuple[str, ...]) -> str:
            return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True))

        out = [f"LCE deployability: {len(self.binary_layers)} of {len(self.layers)} quantized "
               f"layers become binary {BINARY_OP} operations", line(header).rstrip()]
        for row, verdict in zip(rows, self.layers, strict=True):
            out.append(line(row).rstrip())
            for kind, findings in (("not binary", verdict.blockers),
                                   ("advice", verdict.advice)):
                for f in findings:
                    out += [f"      {kind}: {f.reason}", f"        fix: {f.fix}"]
        return out


def lce_report(model: keras.Model) -> Deployability:
    """The LCE verdict of every bnn_cli quantized layer of ``model`` (either form: the
    trained model with kernel quantizers, or the inference model with quantized kernels)."""

    return Deployability("lce", [lce_verdict(layer) for layer in flat_layers(model)
                                 if isinstance(layer, QuantizerMixin)])


def flat_layers(model: keras.Model) -> list[keras.layers.Layer]:
    found = []
    for layer in model.layers:
        found += flat_layers(layer) if isinstance(layer, keras.Model) else [layer]
    return found


def lce_verdict(layer: keras.layers.Layer) -> LayerVerdict:
    verdict = LayerVerdict(layer.name, type(layer).__name__, BINARY_OP)
    kind = _kind_blocker(layer)
    if kind is None:
        verdict.blockers += _conv2d_blockers(layer)
    else:
        verdict.op, finding = kind
        verdict.blockers.append(finding)
    verdict.blockers += [f for f in (_input_blocker(layer), _kernel_blocker(layer)) if f]
    if verdict.binary:
        verdict.advice += _conv2d_advice(layer)
    elif verdict.op == BINARY_OP:
        verdict.op = "CONV_2D"
    return verdict


# --- The layer's kind: LCE binarizes TensorFlow's Conv2D op and nothing else. -----------

def _kind_blocker(layer: keras.layers.Layer) -> tuple[str, Finding] | None:
    """The float op and the reason for every layer that is not a plain 2D convolution."""
    layers = keras.layers
    if isinstance(layer, layers.Conv2D) and not isinstance(layer, layers.Conv2DTranspose):
        return None
    if isinstance(layer, layers.Dense):
        return "FULLY_CONNECTED", Finding(
            "layer_type", "LCE has no binary dense operation: it runs as a float "
            "FULLY_CONNECTED (after LceQuantize + LceDequantize if its input is binarized)",
            "write it as a 1x1 QuantConv2D: Reshape to (1, 1, features), QuantConv2D with "
            "filters: units and kernel_size: 1, then Flatten")
    if isinstance(layer, layers.DepthwiseConv2D):
        return "DEPTHWISE_CONV_2D", Finding(
            "layer_type", "LCE has no binary depthwise convolution",
            "keep it real-valued (a DepthwiseConv2D is cheap) or use a QuantConv2D")
    if isinstance(layer, (layers.SeparableConv1D, layers.SeparableConv2D)):
        return "DEPTHWISE_CONV_2D + CONV_2D", Finding(
            "layer_type", "LCE has no binary depthwise convolution, and the pointwise part "
            "reads the depthwise output, not a binarized input",
            "use a real DepthwiseConv2D followed by a 1x1 QuantConv2D with an input_quantizer")
    if isinstance(layer, layers.Conv1D):
        return "CONV_2D", Finding(
            "layer_type", "Keras runs a 1D convolution as ExpandDims + Conv2D, and the "
            "reshape between the binarizer and the convolution stops LCE's fusion",
            "Reshape to (steps, 1, channels) and use a QuantConv2D with kernel_size (k, 1)")
    return "float", Finding(
        "layer_type", f"LCE's only binary layer is the 2D convolution ({BINARY_OP}); a "
        f"{type(layer).__name__} runs in float",
        "use a QuantConv2D (e.g. UpSampling2D + QuantConv2D for a transposed convolution)")


# --- A 2D convolution's settings. --------------------------------------------------------

def _conv2d_blockers(layer: keras.layers.Conv2D) -> list[Finding]:
    found = []
    if layer.data_format != "channels_last":
        found.append(Finding("data_format", "LCE binarizes NHWC convolutions only",
                             "set data_format: channels_last"))
    pad = float(getattr(layer, "pad_values", 0.0))
    if layer.padding == "same" and pad not in (0.0, 1.0):
        found.append(Finding(
            "padding", f"padding same with pad_values {pad:g}: LCE fuses the padding only "
            "when it pads with 1 (or with zeros, on arm)", "set pad_values: 1"))
    per_group = latent_kernel(layer).shape[2]
    if layer.groups > 1 and per_group % BITPACK_WIDTH:
        found.append(Finding(
            "groups", f"groups {layer.groups} leave {per_group} input channels per group; "
            f"a binary grouped convolution needs a multiple of {BITPACK_WIDTH} (the "
            "converter reports an error and keeps a float CONV_2D)",
            f"use groups that leave a multiple of {BITPACK_WIDTH} input channels per group"))
    return found


def _conv2d_advice(layer: keras.layers.Conv2D) -> list[Finding]:
    """What does not stop conversion but costs speed (LCE's model optimization guide)."""
    advice = []
    if layer.padding == "same" and float(getattr(layer, "pad_values", 0.0)) == 0.0:
        advice.append(Finding(
            "padding", "padding same with zeros is binary only for LCE's arm target, with "
            "an extra correction step (slower; the xcore target keeps it float)",
            "set pad_values: 1"))
    channels_in = latent_kernel(layer).shape[2] * layer.groups
    if channels_in % BITPACK_WIDTH:
        padded = -(-channels_in // BITPACK_WIDTH) * BITPACK_WIDTH
        advice.append(Finding(
            "channels_in", f"{channels_in} input channels are bitpacked as {padded}: LCE "
            f"runs fastest with a multiple of {BITPACK_WIDTH}",
            f"give the previous layer a multiple of {BITPACK_WIDTH} filters"))
    if layer.filters % 8:
        advice.append(Finding(
            "channels_out", f"{layer.filters} output channels: LCE runs fastest with a "
            "multiple of 8", "set filters to a multiple of 8"))
    return advice


# --- The input binarizer: its forward pass must be the sign. ----------------------------

_POINTS = np.array([-2.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 2.0], np.float32)
_SIGN = np.where(_POINTS < 0, -1.0, 1.0).astype(np.float32)


def _input_blocker(layer: keras.layers.Layer) -> Finding | None:
    fix = "set input_quantizer: ste_sign (or approx_sign, swish_sign)"
    if layer.input_quantizer is None:
        if _is_sign(_layer_before(layer)):
            return None  # (a sign layer right before: LCE fuses that one too)
        return Finding("input_quantizer", "the inputs are real-valued (no input_quantizer)",
                       f"{fix}, if this layer's inputs may be binarized (the first layer, "
                       "which sees the data, usually stays real)")
    if _is_sign(layer.input_quantizer):
        return None
    return Finding("input_quantizer", f"input_quantizer {_name(layer.input_quantizer)} does "
                   "not compute the sign (-1 below 0, +1 from 0 on): "
                   f"{_describe(_forward(layer.input_quantizer))}", fix)


def _layer_before(layer: keras.layers.Layer) -> keras.layers.Layer | None:
    """The quantizer or activation layer whose output is this layer's only input."""

    nodes = getattr(layer, "_inbound_nodes", [])
    before = nodes[0].inbound_layers if nodes else None
    return before if isinstance(before, (Quantizer, keras.layers.Activation)) else None


def _is_sign(fn: Any) -> bool:
    values = _forward(fn) if fn is not None else None
    return values is not None and bool(np.array_equal(values, _SIGN))


def _forward(fn: Any) -> np.ndarray | None:
    """``fn`` on the sample points, or None if it does not map them elementwise."""
    try:
        values = np.asarray(fn(tf.constant(_POINTS[None, :])), np.float32).reshape(-1)
    except Exception:  # noqa: BLE001 - a binarizer we cannot run is not a sign
        return None
    return values if values.shape == _POINTS.shape else None


def _describe(values: np.ndarray | None) -> str:
    if values is None:
        return "it does not map values one by one"
    distinct = np.unique(values)
    shown = ", ".join(f"{v:g}" for v in distinct[:4]) + (", ..." if len(distinct) > 4 else "")
    return f"it gives {{{shown}}}, {values[_POINTS == 0][0]:g} at 0"


# --- The kernel: +-1, or +-scale per output channel. -------------------------------------

def latent_kernel(layer: keras.layers.Layer) -> np.ndarray:
    """The kernel as the converter will see it: quantized (latent or inference form)."""
    return np.asarray(layer.quantized_weights()["kernel"])


def _kernel_blocker(layer: keras.layers.Layer) -> Finding | None:
    if "kernel" not in layer.quantized_weights():
        return None  # (depthwise and separable kernels: the layer type already says why)
    kernel = latent_kernel(layer)
    if is_binary_filter(kernel):
        return None
    quantizer = layer.kernel_quantizer
    what = (f"kernel_quantizer {_name(quantizer)} gives" if quantizer is not None
            else "the kernel is real-valued (no kernel_quantizer):")
    return Finding("kernel_quantizer", f"{what} {len(np.unique(kernel))} distinct values, "
                   "not +-1 or +-scale per output channel",
                   "set kernel_quantizer: ste_sign (+-1) or magnitude_aware_sign (+-scale "
                   "per output channel)")


def is_binary_filter(kernel: np.ndarray) -> bool:
    """LCE's test (IsBinaryFilter): every weight is +-scale of its output channel, the
    scale read from the channel's first weight and not zero."""
    flat = kernel.reshape(-1, kernel.shape[-1])
    scale = np.abs(flat[0])
    if (scale <= np.finfo(np.float32).eps).any():
        return False
    return bool((np.abs(np.abs(flat / scale) - 1.0) <= _FILTER_TOLERANCE).all())


def _name(quantizer: Any) -> str:
    try:
        described = quantizers.serialize(quantizer)
    except UserError:
        return getattr(quantizer, "__name__", type(quantizer).__name__)
    return described if isinstance(described, str) else described["class_name"]
