r"""Model summaries for quantized networks (as ``larq.models.summary``).

:func:`summary` prints Larq's two tables: per layer, the input precision, output shape,
parameters by bit width, memory and multiply-accumulates (MACs) by precision; then the
totals, memory, compression and the share of binarized MACs. :func:`summary_data`
returns the same figures as a :class:`ModelSummary`.

The counting rules are Larq's:

- A weight's bit width is ``getattr(variable, "precision", 32)``; the quantized layers
  set ``variable.precision`` from their quantizer (``SteSign`` -> 1, ``DoReFa(k_bit=2)``
  -> 2). Memory is ``sum(bit width * count)`` over the weights; the float-32 equivalent
  is ``32 * count``.
- Batch norm's ``beta`` (``gamma``) is left out where ``moving_mean``
  (``moving_variance``) exists: at inference it folds into the moving statistics.
- MACs are counted for (quantized) ``Conv1D``, ``Conv2D``, ``SeparableConv1D/2D``,
  ``DepthwiseConv2D`` and ``Dense`` layers (and their subclasses, e.g.
  ``Conv2DTranspose``): each non-bias weight gives ``count * output pixels`` MACs at
  precision ``max(input precision or 32, weight bit width)``, where the input precision
  is the layer's ``input_quantizer.precision`` and the output pixels are the product of
  the output's spatial dimensions (1 for ``Dense`` on vectors). Flatten, batch norm and
  1D/2D pooling count 0; other layers are not counted ("?").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from bnn_cli._keras import keras
from bnn_cli.registry import keras_scope

__all__ = ["LayerSummary", "ModelSummary", "load_model", "summary", "summary_data"]

MAC_LAYERS: tuple[type, ...] = (
    keras.layers.Conv1D,
    keras.layers.Conv2D,
    keras.layers.SeparableConv1D,
    keras.layers.SeparableConv2D,
    keras.layers.DepthwiseConv2D,
    keras.layers.Dense,
)
"""Layers whose weights count MACs (bnn_cli's quantized layers subclass these)."""

OP_COUNT_LAYERS: tuple[type, ...] = (
    keras.layers.Flatten,
    keras.layers.BatchNormalization,
    keras.layers.MaxPool1D,
    keras.layers.MaxPool2D,
    keras.layers.AveragePooling1D,
    keras.layers.AveragePooling2D,
    *MAC_LAYERS,
)
"""Layers whose MACs are known (0 for those not in :data:`MAC_LAYERS`)."""

_FUSED_BATCH_NORM_PAIRS = (("beta", "moving_mean"), ("gamma", "moving_variance"))
_KIB_BITS = 8 * 1024

Shape = tuple[int, ...]


# ---------------------------------------------------------------------------------------
# Figures.
# ---------------------------------------------------------------------------------------


def _add(counts: dict[int, int], key: int, n: int) -> None:
    counts[key] = counts.get(key, 0) + n


def _sum_counts(dicts: Iterable[dict[int, int] | None]) -> dict[int, int]:
    total: dict[int, int] = {}
    for counts in dicts:
        for key, n in (counts or {}).items():
            _add(total, key, n)
    return dict(sorted(total.items()))


def _str_keys(counts: dict[int, int] | None) -> dict[str, int] | None:
    return None if counts is None else {str(k): v for k, v in sorted(counts.items())}


@dataclass
class LayerSummary:
    """The figures of one layer (or of a nested model, summed over its layers).

    ``macs_by_precision`` is ``None`` where MACs are not counted (shown as "?").
    """

    name: str
    input_precision: int | None
    output_shape: Shape | list[Shape] | None
    params_by_bitwidth: dict[int, int]
    trainable_params: int
    non_trainable_params: int
    memory_bits: int
    int8_fp_weights_memory_bits: int
    fp32_equivalent_memory_bits: int
    macs_by_precision: dict[int, int] | None

    @property
    def total_params(self) -> int:
        return sum(self.params_by_bitwidth.values())

    @property
    def output_shape_str(self) -> str:
        return str(self.output_shape or "multiple")

    def as_dict(self) -> dict[str, Any]:
        """JSON-able figures (bit widths and precisions as string keys)."""
        return {
            "name": self.name,
            "input_precision": self.input_precision,
            "output_shape": _shape_as_list(self.output_shape),
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "params_by_bitwidth": _str_keys(self.params_by_bitwidth),
            "memory_bits": self.memory_bits,
            "macs_by_precision": _str_keys(self.macs_by_precision),
        }


@dataclass
class ModelSummary:
    """The figures of :func:`summary`, for a whole model.

    Parameter counts follow the summary's rules (fused batch-norm parameters left out);
    ``count_params``, ``keras_trainable_params`` and ``keras_non_trainable_params`` are
    Keras's own counts of every weight.
    """

    name: str
    layers: list[LayerSummary]
    count_params: int
    keras_trainable_params: int
    keras_non_trainable_params: int
    input_shape: Any = None
    output_shape: Any = None
    params_by_bitwidth: dict[int, int] = field(init=False)
    macs_by_precision: dict[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.params_by_bitwidth = _sum_counts(lp.params_by_bitwidth for lp in self.layers)
        self.macs_by_precision = _sum_counts(lp.macs_by_precision for lp in self.layers)

    # Sums over the layers.
    @property
    def total_params(self) -> int:
        return sum(self.params_by_bitwidth.values())

    @property
    def trainable_params(self) -> int:
        return sum(lp.trainable_params for lp in self.layers)

    @property
    def non_trainable_params(self) -> int:
        return sum(lp.non_trainable_params for lp in self.layers)

    @property
    def memory_bits(self) -> int:
        return sum(lp.memory_bits for lp in self.layers)

    @property
    def int8_fp_weights_memory_bits(self) -> int:
        """Memory if every weight wider than 8 bits were stored in 8 bits."""
        return sum(lp.int8_fp_weights_memory_bits for lp in self.layers)

    @property
    def fp32_equivalent_memory_bits(self) -> int:
        return sum(lp.fp32_equivalent_memory_bits for lp in self.layers)

    @property
    def compression_ratio(self) -> float:
        """``memory / float-32 equivalent memory`` (Larq's "Compression Ratio of Memory")."""
        return self.memory_bits / max(1e-8, self.fp32_equivalent_memory_bits)

    @property
    def total_macs(self) -> int:
        return sum(self.macs_by_precision.values())

    @property
    def binarized_mac_ratio(self) -> float:
        """Share of MACs at precision 1 (XNOR-popcount operations)."""
        return self.macs_by_precision.get(1, 0) / max(1, self.total_macs)

    @property
    def ternarized_mac_ratio(self) -> float:
        return self.macs_by_precision.get(2, 0) / max(1, self.total_macs)

    @property
    def param_bitwidths(self) -> list[int]:
        """The bit widths of the table's parameter columns."""
        return sorted({b for lp in self.layers for b in lp.params_by_bitwidth})

    @property
    def mac_precisions(self) -> list[int]:
        """The precisions of the table's MAC columns."""
        return sorted({p for lp in self.layers for p in (lp.macs_by_precision or {})})

    def as_dict(self) -> dict[str, Any]:
        """JSON-able figures (bit widths and precisions as string keys)."""
        return {
            "name": self.name,
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "non_trainable_params": self.non_trainable_params,
            "count_params": self.count_params,
            "keras_trainable_params": self.keras_trainable_params,
            "keras_non_trainable_params": self.keras_non_trainable_params,
            "params_by_bitwidth": _str_keys(self.params_by_bitwidth),
            "memory_bits": self.memory_bits,
            "int8_fp_weights_memory_bits": self.int8_fp_weights_memory_bits,
            "fp32_equivalent_memory_bits": self.fp32_equivalent_memory_bits,
            "compression_ratio": self.compression_ratio,
            "total_macs": self.total_macs,
            "macs_by_precision": _str_keys(self.macs_by_precision),
            "binarized_mac_ratio": self.binarized_mac_ratio,
            "ternarized_mac_ratio": self.ternarized_mac_ratio,
            "input_shape": self.input_shape,
            "output_shape": self.output_shape,
            "layers": [lp.as_dict() for lp in self.layers],
        }

    def reference_figures(self) -> dict[str, Any]:
        """The figures under the keys of ``/work/shared/zoo/reference.json``.

        ``summary_params_by_bitwidth``, ``macs_by_precision`` and ``memory_bits`` as
        ``larq.models.summary`` counts them; ``count_params``, ``trainable`` and
        ``non_trainable`` as Keras does; shapes without the batch dimension.
        """
        return {
            "count_params": self.count_params,
            "trainable": self.keras_trainable_params,
            "non_trainable": self.keras_non_trainable_params,
            "summary_params_by_bitwidth": _str_keys(self.params_by_bitwidth),
            "macs_by_precision": _str_keys(self.macs_by_precision),
            "memory_bits": self.memory_bits,
            "input_shape": self.input_shape,
            "output_shape": self.output_shape,
            "num_layers": len(self.layers),
        }

    def to_text(self, include_macs: bool = True) -> str:
        """The two tables that :func:`summary` prints."""
        return "\n".join(_tables(self, include_macs))


# ---------------------------------------------------------------------------------------
# Profiling a model.
# ---------------------------------------------------------------------------------------


def summary_data(model: keras.Model) -> ModelSummary:
    """The figures of :func:`summary` for a built model."""
    _check_built(model)
    return _model_summary(model)


def _check_built(model: keras.Model) -> None:
    if not model.built:
        raise ValueError(
            "This model has not yet been built. Build the model first by calling "
            "`model.build()` or calling `model.fit()` with some data, or specify an "
            "`input_shape` argument in the first layer(s) for automatic build."
        )


def _model_summary(model: keras.Model) -> ModelSummary:
    return ModelSummary(
        name=model.name,
        layers=[_layer_summary(layer) for layer in model.layers],
        count_params=int(model.count_params()),
        keras_trainable_params=_count(model.trainable_weights),
        keras_non_trainable_params=_count(model.non_trainable_weights),
        input_shape=_without_batch(_shape_attr(model, "input_shape")),
        output_shape=_without_batch(_shape_attr(model, "output_shape")),
    )


def _layer_summary(layer: keras.layers.Layer) -> LayerSummary:
    if isinstance(layer, keras.Model):
        return _nested_model_row(layer)
    weights = _counted_weights(layer)
    trainable = {id(w) for w in layer.trainable_weights}
    params: dict[int, int] = {}
    for w in weights:
        _add(params, _bitwidth(w), _size(w))
    input_precision = _input_precision(layer)
    output_shape = _output_shape(layer)
    return LayerSummary(
        name=layer.name,
        input_precision=input_precision,
        output_shape=output_shape,
        params_by_bitwidth=params,
        trainable_params=sum(_size(w) for w in weights if id(w) in trainable),
        non_trainable_params=sum(_size(w) for w in weights if id(w) not in trainable),
        memory_bits=sum(_bitwidth(w) * _size(w) for w in weights),
        int8_fp_weights_memory_bits=sum(min(_bitwidth(w), 8) * _size(w) for w in weights),
        fp32_equivalent_memory_bits=32 * sum(_size(w) for w in weights),
        macs_by_precision=_macs(layer, weights, input_precision, output_shape),
    )


def _nested_model_row(model: keras.Model) -> LayerSummary:
    """A nested model as one row: sums over its layers (as Larq shows it)."""
    inner = _model_summary(model)
    rows = inner.layers
    return LayerSummary(
        name=model.name,
        input_precision=rows[0].input_precision if rows else None,
        output_shape=rows[-1].output_shape if rows else None,
        params_by_bitwidth=inner.params_by_bitwidth,
        trainable_params=inner.trainable_params,
        non_trainable_params=inner.non_trainable_params,
        memory_bits=inner.memory_bits,
        int8_fp_weights_memory_bits=inner.int8_fp_weights_memory_bits,
        fp32_equivalent_memory_bits=inner.fp32_equivalent_memory_bits,
        macs_by_precision=inner.macs_by_precision,
    )


def _counted_weights(layer: keras.layers.Layer) -> list:
    """The layer's weights, less batch-norm parameters that fold into its statistics."""
    weights = list(layer.weights)
    if isinstance(layer, keras.layers.BatchNormalization):
        for param, statistic in _FUSED_BATCH_NORM_PAIRS:
            names = [_short_name(w) for w in weights]
            if param in names and statistic in names:
                weights.pop(names.index(param))
    return weights


def _short_name(weight: Any) -> str:
    return weight.name.split("/")[-1].replace(":0", "")


def _bitwidth(weight: Any) -> int:
    # `precision` is set by the quantized layers; None (a quantizer without a known
    # precision) counts as float, where Larq would fail.
    return getattr(weight, "precision", None) or 32


def _size(weight: Any) -> int:
    return int(math.prod(weight.shape.as_list()))


def _count(weights: Sequence[Any]) -> int:
    return sum(_size(w) for w in weights)


def _input_precision(layer: keras.layers.Layer) -> int | None:
    return getattr(getattr(layer, "input_quantizer", None), "precision", None)


def _macs(layer: keras.layers.Layer, weights: list, input_precision: int | None,
          output_shape: Any) -> dict[int, int] | None:
    if not isinstance(layer, OP_COUNT_LAYERS):
        return None
    pixels = _output_pixels(output_shape)
    if pixels is None:
        return None
    macs: dict[int, int] = {}
    if isinstance(layer, MAC_LAYERS):
        for w in weights:
            if "bias" not in w.name:
                precision = max(input_precision or 32, _bitwidth(w))
                _add(macs, precision, _size(w) * pixels)
    return macs


def _output_pixels(shape: Any) -> int | None:
    """Pixels of one output feature map: the product of the spatial dimensions.

    ``None`` where unknown: several outputs, a rank below 2, or an unknown spatial size
    (where Larq would multiply the ``-1`` placeholders).
    """
    if not isinstance(shape, tuple) or len(shape) < 2:
        return None
    spatial = shape[1:-1]
    if any(not isinstance(d, int) or d < 0 for d in spatial):
        return None
    return int(math.prod(spatial))


def _output_shape(layer: keras.layers.Layer) -> Shape | list[Shape] | None:
    """The output shape with ``-1`` for unknown dimensions, ``None`` if not unique."""
    try:
        shape = layer.output_shape
    except (AttributeError, RuntimeError):  # never called, or several different shapes
        return None
    if isinstance(shape, list):
        if len(shape) == 1:
            return _normalize_shape(shape[0])
        return [_normalize_shape(s) for s in shape]
    return _normalize_shape(shape)


def _normalize_shape(shape: Iterable[Any]) -> Shape:
    return tuple(dim if dim else -1 for dim in shape)


def _shape_attr(model: keras.Model, attr: str) -> Any:
    try:
        return getattr(model, attr)
    except (AttributeError, RuntimeError):
        return None


def _without_batch(shape: Any) -> Any:
    """``(None, 28, 28, 1)`` -> ``[28, 28, 1]``; a list of shapes -> a list of lists."""
    if shape is None:
        return None
    if isinstance(shape, list):
        return [_without_batch(s) for s in shape]
    return list(shape[1:])


def _shape_as_list(shape: Any) -> Any:
    if isinstance(shape, list):
        return [list(s) for s in shape]
    return list(shape) if shape is not None else None


# ---------------------------------------------------------------------------------------
# Printing.
# ---------------------------------------------------------------------------------------


def load_model(path: Any, **kwargs: Any) -> keras.Model:
    """``keras.models.load_model`` with every plain name resolving to bnn_cli's classes.

    Models saved by Larq name their layers and quantizers by plain class names; loaded
    here they become bnn_cli's, even when Larq (which registers the same names with
    Keras) is imported in the same process.
    """

    with keras_scope():
        return keras.models.load_model(path, **kwargs)


def summary(model: keras.Model, print_fn: Callable[[str], Any] | None = None,
            include_macs: bool = True) -> None:
    """Print the layer table and the summary table of a model, as Larq does.

    Per layer: input precision, output shape, parameters by bit width, memory in KiB
    (``8 * 1024`` 1-bit weights = 1 kB) and MACs by precision. Then: total, trainable
    and non-trainable parameters; model size; model size with float weights stored in
    8 bits; float-32 equivalent size; compression ratio (``size / float-32 size``);
    number of MACs and the ratio of binarized (and ternarized) MACs.

    A MAC (multiply-accumulate) has the precision of its widest input.

    Args:
        model: a built Keras model.
        print_fn: prints each table (default ``print``).
        include_macs: include the MAC columns and totals. (Larq keeps the MAC columns
            of the layer table even when this is false.)

    Raises:
        ValueError: if the model is not built.
    """
    print_fn = print_fn or print
    for table in _tables(summary_data(model), include_macs):
        print_fn(table)


def _tables(data: ModelSummary, include_macs: bool) -> list[str]:
    return [
        _render(_layer_rows(data, include_macs), f"{data.name} stats",
                right_align=True, heading_border=True, footing_border=True),
        _render(_summary_rows(data, include_macs), f"{data.name} summary",
                right_align=False, heading_border=False, footing_border=False),
    ]


def _entry(value: int | None, units: int = 1) -> str:
    """A table cell as Larq writes it: ``?`` unknown, counts as is, memory in units."""
    if value is None:
        return "?"
    if value == 0 or units == 1:
        return str(value)
    return f"{value / units:.2f}"


def _layer_rows(data: ModelSummary, include_macs: bool) -> list[list[str]]:
    bitwidths = data.param_bitwidths
    precisions = data.mac_precisions if include_macs else []
    header = ["Layer", "Input prec.\n(bit)", "Outputs",
              *(f"# {b}-bit\nx 1" for b in bitwidths), "Memory\n(kB)",
              *(f"{p}-bit MACs" for p in precisions)]
    rows = [header]
    for lp in data.layers:
        macs = lp.macs_by_precision
        rows.append([
            lp.name, str(lp.input_precision or "-"), lp.output_shape_str,
            *(_entry(lp.params_by_bitwidth.get(b, 0)) for b in bitwidths),
            _entry(lp.memory_bits, _KIB_BITS),
            *(_entry(None if macs is None else macs.get(p, 0)) for p in precisions),
        ])
    rows.append([
        "Total", "", "",
        *(_entry(data.params_by_bitwidth.get(b, 0)) for b in bitwidths),
        _entry(data.memory_bits, _KIB_BITS),
        *(_entry(data.macs_by_precision.get(p, 0)) for p in precisions),
    ])
    return rows


def _summary_rows(data: ModelSummary, include_macs: bool) -> list[list[str]]:
    rows = [
        ["Total params", _readable_number(data.total_params)],
        ["Trainable params", _readable_number(data.trainable_params)],
        ["Non-trainable params", _readable_number(data.non_trainable_params)],
        ["Model size", _readable_memory(data.memory_bits)],
        ["Model size (8-bit FP weights)", _readable_memory(data.int8_fp_weights_memory_bits)],
        ["Float-32 Equivalent", _readable_memory(data.fp32_equivalent_memory_bits)],
        ["Compression Ratio of Memory", f"{data.compression_ratio:.2f}"],
    ]
    if include_macs:
        rows.append(["Number of MACs", _readable_number(data.total_macs)])
        if data.binarized_mac_ratio > 0:
            rows.append(["Ratio of MACs that are binarized", f"{data.binarized_mac_ratio:.4f}"])
        if data.ternarized_mac_ratio > 0:
            rows.append(["Ratio of MACs that are ternarized",
                         f"{data.ternarized_mac_ratio:.4f}"])
    return rows


def _readable_number(num: float) -> str:
    """3 significant figures with a k/M/B/T suffix: ``93588`` -> ``93.6 k``."""
    # Round first, so that e.g. 999_900 becomes "1 M" rather than "1000 k".
    num = float(f"{num:.3g}")
    if num < 1000:
        return str(num).rstrip("0").rstrip(".")
    if num >= 1e15:
        return f"{num:.2E}"
    magnitude = 0
    while abs(num) >= 1000 and magnitude < 4:
        magnitude += 1
        num /= 1000.0
    return f"{num:.3g}".rstrip(".") + ["", " k", " M", " B", " T"][magnitude]


def _readable_memory(bits: int) -> str:
    """Bytes in binary units: ``13_504 * 8`` bits -> ``13.19 KiB``."""
    size = bits / 8
    for suffix in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:,.2f} {suffix}"
        size /= 1024
    return f"{size:,.2f} GiB"


def _render(rows: list[list[str]], title: str, *, right_align: bool, heading_border: bool,
            footing_border: bool) -> str:
    """An ASCII table in the style of Larq's (terminaltables, no column separators).

    The title sits in the top border when it fits; cells with newlines span lines.
    """
    cells = [[cell.split("\n") for cell in row] for row in rows]
    n_cols = max(len(row) for row in cells)
    for row in cells:
        row.extend([[""]] * (n_cols - len(row)))
    widths = [max(len(line) for row in cells for line in row[i]) for i in range(n_cols)]
    inner = sum(w + 2 for w in widths)
    rule = "+" + "-" * inner + "+"
    top = "+" + title + "-" * (inner - len(title)) + "+" if len(title) <= inner else rule
    lines = [top]
    for r, row in enumerate(cells):
        for k in range(max(len(cell) for cell in row)):
            parts = []
            for i, cell in enumerate(row):
                text = cell[k] if k < len(cell) else ""
                aligned = text.rjust(widths[i]) if right_align and i > 0 else text.ljust(widths[i])
                parts.append(f" {aligned} ")
            lines.append("|" + "".join(parts) + "|")
        last = r == len(cells) - 1
        if not last and ((heading_border and r == 0)
                         or (footing_border and r == len(cells) - 2)):
            lines.append(rule)
    lines.append(rule)
    return "\n".join(lines)
