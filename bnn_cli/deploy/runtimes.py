"""Exported models, each run through its own runtime: Keras, TensorFlow's SavedModel
loader, the TFLite interpreter and, for flatbuffers with Larq Compute Engine operations,
LCE's interpreter (the optional ``larq-compute-engine`` package).

``bnn export`` checks what it wrote with these, ``bnn predict`` answers with them and
``bnn benchmark-model`` times them, so all three see a file the way a device would.
"""

from __future__ import annotations

import importlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from bnn_cli._keras import tf
from bnn_cli.assemble.vetting import load_vetted_model, model_format
from bnn_cli.errors import UserError

FORMATS = ("keras", "saved_model", "tflite", "lce")
LCE_INSTALL = "pip install larq-compute-engine==0.16.0"
LCE_OP_PREFIX = "Lce"  # LCE's custom operations: LceBconv2d, LceQuantize, LceBMaxPool2d...


def lce_package() -> ModuleType:
    """The optional Larq Compute Engine package, or a UserError saying how to install it."""
    try:
        return importlib.import_module("larq_compute_engine")
    except ImportError as exc:
        raise UserError(f"the Larq Compute Engine (LCE) needs the optional package "
                        f"larq-compute-engine, which is not installed ({exc}); install it "
                        f"with `{LCE_INSTALL}` (or `pip install \"bnn-cli[deploy]\"`), or use "
                        "--format tflite") from None


# ---------------------------------------------------------------------------------------
# What a file is.
# ---------------------------------------------------------------------------------------


def detect_format(path: str | Path) -> str:
    """``keras``, ``saved_model``, ``tflite`` or ``lce`` (a flatbuffer with LCE operations):
    :func:`~bnn_cli.assemble.vetting.model_format`'s verdict, in the runtimes' terms."""
    fmt = model_format(Path(path))
    if fmt == "tflite":
        return "lce" if lce_operators(Path(path).read_bytes()) else "tflite"
    return "keras" if fmt in ("hdf5", "zip") else fmt


@dataclass(frozen=True)
class Operator:
    """One operation of a TFLite flatbuffer: its type (builtin name, or the custom code
    such as ``LceBconv2d``) and the names of the tensors it writes, which carry the
    Keras layer names the converter kept."""

    type: str
    outputs: tuple[str, ...]


def read_flatbuffer(flatbuffer: bytes) -> Any:
    """A TFLite flatbuffer as TensorFlow's generated object API reads it (``ModelT``:
    subgraphs, operators, tensors, buffers), the reader tf.lite's own tools use."""
    schema = importlib.import_module("tensorflow.lite.python.schema_py_generated")
    return schema.ModelT.InitFromPackedBuf(bytearray(flatbuffer), 0)


def op_type(model: Any, op: Any) -> str:
    """An operator's type: its builtin name, or the custom code (``LceBconv2d``)."""
    schema = importlib.import_module("tensorflow.lite.python.schema_py_generated")
    code = model.operatorCodes[op.opcodeIndex]
    if code.customCode:
        return code.customCode.decode()
    builtin = max(code.builtinCode, code.deprecatedBuiltinCode)
    return next((name for name, value in vars(schema.BuiltinOperator).items()
                 if value == builtin and not name.startswith("_")), "?")


def operators(flatbuffer: bytes) -> list[Operator]:
    """The operations of a TFLite flatbuffer's main subgraph, in execution order."""
    model = read_flatbuffer(flatbuffer)
    graph = model.subgraphs[0]
    return [Operator(op_type(model, op),
                     tuple(graph.tensors[i].name.decode() for i in op.outputs if i >= 0))
            for op in graph.operators]


def lce_operators(flatbuffer: bytes) -> list[Operator]:
    return [op for op in operators(flatbuffer) if op.type.startswith(LCE_OP_PREFIX)]


# ---------------------------------------------------------------------------------------
# Running a file.
# ---------------------------------------------------------------------------------------


class Runtime:
    """A loaded export: ``predict`` over many inputs, ``invoke`` one batch (for timing)."""

    name: str

    def predict(self, x: np.ndarray) -> np.ndarray:
        return np.concatenate([self.invoke(b) for b in _batches(x)])

    def invoke(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def input_shape(self) -> tuple[int, ...]:
        """The input's shape as the file declares it (batch first)."""
        raise NotImplementedError


class KerasRuntime(Runtime):
    name = "keras"

    def __init__(self, path: Path) -> None:

        # Vetted: a .keras file can name code, and this one comes from outside the run.
        self.model = load_vetted_model(path)

    def predict(self, x: np.ndarray) -> np.ndarray:
        return self.model.predict(x, verbose=0)

    def invoke(self, x: np.ndarray) -> np.ndarray:
        return self.model(x, training=False).numpy()


class SavedModelRuntime(Runtime):
    name = "saved_model"

    def __init__(self, path: Path) -> None:
        self.loaded = tf.saved_model.load(str(path))  # (kept: its functions need it)
        if not hasattr(self.loaded, "serve"):
            raise UserError(f"{path} is a SavedModel without a `serve` endpoint; export it "
                            "with `bnn export --format saved_model`")

    def invoke(self, x: np.ndarray) -> np.ndarray:
        return self.loaded.serve(tf.constant(x, tf.float32)).numpy()


class TFLiteRuntime(Runtime):
    """TensorFlow's interpreter (XNNPACK for float, its own int8 kernels)."""

    name = "tflite"

    def __init__(self, path: Path, threads: int = 1) -> None:
        with warnings.catch_warnings():  # (tf.lite's notice that LiteRT will replace it)
            warnings.simplefilter("ignore", UserWarning)
            self.interpreter = tf.lite.Interpreter(model_path=str(path), num_threads=threads)
        (self.input,) = self.interpreter.get_input_details()
        (self.output,) = self.interpreter.get_output_details()
        self.batch = 0

    def input_shape(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.input["shape"])

    def invoke(self, x: np.ndarray) -> np.ndarray:
        if len(x) != self.batch:  # converted files have batch 1; resize to what comes
            self.interpreter.resize_tensor_input(self.input["index"], x.shape)
            self.interpreter.allocate_tensors()
            self.batch = len(x)
        self.interpreter.set_tensor(self.input["index"], _as_input(x, self.input))
        self.interpreter.invoke()
        return _as_output(self.interpreter.get_tensor(self.output["index"]), self.output)


class LCERuntime(Runtime):
    """LCE's interpreter: TFLite with LCE's kernels (optimized for 64-bit ARM; elsewhere
    its portable reference kernels run, correct but not fast)."""

    name = "lce"

    def __init__(self, path: Path, threads: int = 1) -> None:
        lce_package()
        from larq_compute_engine.tflite.python.interpreter import Interpreter

        self.interpreter = Interpreter(path.read_bytes(), num_threads=threads)

    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.interpreter.input_shapes[0])

    def invoke(self, x: np.ndarray) -> np.ndarray:
        # LCE's interpreter keeps the converted batch size of 1: one call per example.
        return np.asarray(self.interpreter.predict(x.astype(np.float32)))


def load(path: str | Path, *, fmt: str | None = None, threads: int = 1) -> Runtime:
    """The file at ``path`` loaded through its format's runtime (detected if not given)."""
    path = Path(path)
    fmt = fmt or detect_format(path)
    if fmt == "keras":
        return KerasRuntime(path)
    if fmt == "saved_model":
        return SavedModelRuntime(path)
    if fmt == "tflite":
        return TFLiteRuntime(path, threads)
    if fmt == "lce":
        return LCERuntime(path, threads)
    raise UserError(f"unknown model format {fmt!r}; known: {', '.join(FORMATS)}")


def _batches(x: np.ndarray, size: int = 256) -> list[np.ndarray]:
    return [x[i:i + size] for i in range(0, len(x), size)]


def _as_input(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Float inputs as the file takes them (quantized by its scale where it takes int8)."""
    scale, zero = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        info = np.iinfo(detail["dtype"])
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(detail["dtype"])
    return x.astype(detail["dtype"])


def _as_output(y: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    scale, zero = detail["quantization"]
    if detail["dtype"] in (np.int8, np.uint8) and scale:
        return (y.astype(np.float32) - zero) * scale
    return y
