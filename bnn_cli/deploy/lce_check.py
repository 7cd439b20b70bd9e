"""The converted LCE file against ``bnn check --target lce``'s prediction: which layers
became binary ``LceBconv2d`` operations (``bnn export --format lce`` checks each file it
writes, and warns where the two differ)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnn_cli._keras import keras
from bnn_cli.assemble.deployability import (
    BINARY_OP,
    BITPACK_WIDTH,
    flat_layers,
    latent_kernel,
    lce_report,
)
from bnn_cli.deploy.runtimes import op_type, read_flatbuffer
from bnn_cli.layers import QuantizerMixin


@dataclass
class BinaryOpCheck:
    """Layers predicted binary against the layers of the LceBconv2d ops in a file."""

    predicted: list[str]
    found: list[str]

    @property
    def missing(self) -> list[str]:
        return [name for name in self.predicted if name not in self.found]

    @property
    def unexpected(self) -> list[str]:
        return [name for name in self.found if name not in self.predicted]

    @property
    def agrees(self) -> bool:
        return not self.missing and not self.unexpected

    def as_dict(self) -> dict[str, Any]:
        return {"predicted": self.predicted, "found": self.found, "missing": self.missing,
                "unexpected": self.unexpected}

    def warning(self) -> str | None:
        if self.agrees:
            return None
        parts = []
        if self.missing:
            parts.append(f"predicted binary but not {BINARY_OP} in the file: "
                         f"{', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"{BINARY_OP} in the file but not predicted: "
                         f"{', '.join(self.unexpected)}")
        return (f"the LCE file has {len(self.found)} binary {BINARY_OP} operations, `bnn "
                f"check --target lce` predicted {len(self.predicted)}; " + "; ".join(parts))


def compare_with_file(model: keras.Model, flatbuffer: bytes) -> BinaryOpCheck:
    """The prediction for ``model`` against the LceBconv2d ops of its converted file."""
    return BinaryOpCheck(lce_report(model).binary_layers, binary_op_layers(model, flatbuffer))


def check_export(model: keras.Model, path: str | Path) -> dict[str, list[str]]:
    """``bnn export --format lce``'s check of the file it wrote from ``model``: the
    comparison, and a warning on stderr that names the layers where they differ."""
    result = compare_with_file(model, Path(path).read_bytes())
    if (warning := result.warning()) is not None:
        print(f"warning: {warning}", file=sys.stderr)
    return result.as_dict()


def binary_op_layers(model: keras.Model, flatbuffer: bytes) -> list[str]:
    """The layer each LceBconv2d op of ``flatbuffer`` came from.

    Tensor names are no guide (the converter truncates, joins and reuses them: a fused
    op's output can carry the next layer's name, a model output none), so each op is
    matched by its filter: the bitpacked signs of exactly one layer's quantized kernel.
    """
    candidates = {layer.name: _kernel_signs(layer) for layer in flat_layers(model)
                  if isinstance(layer, QuantizerMixin) and "kernel" in layer.quantized_weights()
                  and latent_kernel(layer).ndim == 4}
    order = list(candidates)
    found, unknown = [], []
    for index, signs in enumerate(_bconv_filter_signs(flatbuffer)):
        match = next((name for name, own in candidates.items()
                      if signs is not None and _same_signs(own, signs)), None)
        if match is None:
            unknown.append(f"<unknown {BINARY_OP} #{index}>")
        else:
            found.append(match)
            del candidates[match]  # (identical kernels: each op takes the next layer)
    return sorted(found, key=order.index) + unknown  # in model order, as the prediction


def _same_signs(own: np.ndarray, packed: np.ndarray) -> bool:
    """A layer's sign bits against a filter's, whose input channels are padded up to a
    multiple of 32."""
    channels = own.shape[-1]
    return (own.shape[:3] == packed.shape[:3] and channels <= packed.shape[-1]
            < channels + BITPACK_WIDTH and np.array_equal(own, packed[..., :channels]))


def _kernel_signs(layer: keras.layers.Layer) -> np.ndarray:
    """The kernel's sign bits (1 = negative) in LCE's filter layout (out, h, w, in)."""
    return (latent_kernel(layer) < 0).transpose(3, 0, 1, 2)


def _bconv_filter_signs(flatbuffer: bytes) -> list[np.ndarray | None]:
    """Each LceBconv2d's filter as sign bits (out, h, w, in), in execution order; None
    where the file does not hold it in a form read here."""
    model = read_flatbuffer(flatbuffer)
    graph = model.subgraphs[0]
    return [_filter_signs(graph.tensors[op.inputs[1]], model.buffers)
            for op in graph.operators if op_type(model, op) == BINARY_OP]


def _filter_signs(tensor: Any, buffers: list) -> np.ndarray | None:
    data = buffers[tensor.buffer].data
    shape = [int(d) for d in tensor.shape]
    if data is None or len(shape) != 4:
        return None
    data = np.asarray(data, np.uint8)
    if tensor.type == 0 and data.size == 4 * np.prod(shape):  # FLOAT32: not bitpacked
        return data.view("<f4").reshape(shape) < 0
    if tensor.type != 2 or data.size != 4 * np.prod(shape):  # INT32: bitpacked
        return None
    # int32 words of 32 input channels each, the first channel in the lowest bit; a set
    # bit is a negative weight.
    bits = np.unpackbits(data.reshape(*shape, 4), axis=-1, bitorder="little")
    return bits.reshape(*shape[:3], -1).astype(bool)

