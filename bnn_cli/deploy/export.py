"""``bnn export``: a trained model -> an inference file, checked against the trained model.

Formats: Keras (``.keras``), SavedModel, TFLite (float32) and, with the optional
``larq-compute-engine`` package, LCE (a ``.tflite`` with bitpacked binary operations).

The inference form applies each quantized layer's kernel quantizers once: the stored
kernels are their quantized values (exactly +-1 for sign quantizers, +-scale per channel
for magnitude-aware sign) and the layers no longer quantize them; input quantizers stay,
as they act on activations. After writing, the file is loaded through its own runtime
and its predictions on the config's test split are compared with the trained model's.
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnn_cli._keras import keras, tf
from bnn_cli.data import pipeline as data
from bnn_cli.deploy.lce_check import check_export
from bnn_cli.deploy.runtimes import FORMATS, lce_package, load
from bnn_cli.deploy.targets import TargetOptions, load_trained
from bnn_cli.errors import UserError
from bnn_cli.layers import QuantizerMixin
from bnn_cli.rundir.run import (
    RunDir,
    atomic_save,
    atomic_save_folder,
    atomic_write_bytes,
    atomic_write_json,
)

_FILE_NAMES = {"keras": "model.keras", "saved_model": "saved_model", "tflite": "model.tflite",
               "lce": "model-lce.tflite"}


@dataclass
class ExportReport:
    format: str
    path: str
    latent: bool
    int8: bool  # real-valued layers quantized to int8 after training (tflite)
    checkpoint: str | None
    size_bytes: int
    float32_size_bytes: int  # the latent (training-form) model, saved without its optimizer
    examples: int
    top1_agreement: float
    max_prob_diff: float
    accuracy: float  # the export's top-1 accuracy on the test split
    trained_accuracy: float  # the trained model's, on the same examples
    check_file: str
    # lce: the layers predicted binary and those of the file's LceBconv2d ops
    # (predicted, found, missing, unexpected); see bnn_cli.assemble.deployability
    binary_ops: dict[str, list[str]] | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def print(self) -> None:
        source = f" from {self.checkpoint}" if self.checkpoint else ""
        form = "latent (training form)" if self.latent else "inference (quantized kernels)"
        form += ", int8 real-valued layers" if self.int8 else ""
        source = f",{source}" if self.int8 and source else source
        print(f"wrote {self.path} ({self.format}, {form}{source})")
        print(f"size: {_human(self.size_bytes)} (float32 latent model: "
              f"{_human(self.float32_size_bytes)})")
        print(f"check on {self.examples} test examples: top-1 agreement "
              f"{self.top1_agreement:.2%}, largest probability difference "
              f"{self.max_prob_diff:.3g} ({self.check_file})")
        change = (self.accuracy - self.trained_accuracy) * 100
        print(f"test accuracy: {self.accuracy:.2%} (trained model {self.trained_accuracy:.2%}"
              f", change {change:+.2f} points)")
        if self.binary_ops is not None:
            ops = self.binary_ops
            agrees = not ops["missing"] and not ops["unexpected"]
            print(f"binary operations: {len(ops['found'])} LceBconv2d "
                  f"({', '.join(ops['found']) or 'none'}), "
                  + ("as `bnn check --target lce` predicted" if agrees else
                     f"NOT as `bnn check --target lce` predicted ({len(ops['predicted'])}: "
                     f"{', '.join(ops['predicted']) or 'none'})"))


def _human(size: int) -> str:
    return f"{size / 1024:.1f} KiB ({size} bytes)"


# ---------------------------------------------------------------------------------------
# The inference model.
# ---------------------------------------------------------------------------------------


def inference_model(model: keras.Model) -> keras.Model:
    """A copy of ``model`` whose quantized kernels hold their quantized values and whose
    layers no longer quantize them (no optimizer, no latent weights)."""

    def clone(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        if isinstance(layer, QuantizerMixin):
            config.update({arg: None for arg, _ in layer._quantized_weights})
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    for old, new in zip(model.layers, copy.layers, strict=True):
        new.set_weights(_exported_weights(old))
    return copy


def latent_model(model: keras.Model) -> keras.Model:
    """An uncompiled copy of ``model`` (the training form without its optimizer)."""
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    return copy


def _exported_weights(layer: keras.layers.Layer) -> list[np.ndarray]:
    """The layer's weights in order, each quantized variable replaced by its value."""

    if not isinstance(layer, QuantizerMixin):
        return layer.get_weights()
    quantized = {id(getattr(layer, attr)): value
                 for attr, value in layer.quantized_weights().items()}
    return [np.asarray(quantized.get(id(w), w)) for w in layer.weights]


# ---------------------------------------------------------------------------------------
# Writing, one function per format.
# ---------------------------------------------------------------------------------------


def _write_keras(model: keras.Model, path: Path) -> None:
    atomic_save(path, lambda tmp: model.save(tmp))


def _write_saved_model(model: keras.Model, path: Path) -> None:
    # Keras's inference-only SavedModel (a `serve` endpoint, no training state).
    atomic_save_folder(path, lambda tmp: model.export(str(tmp)))


def _write_tflite(model: keras.Model, path: Path, representative: Examples = None) -> None:
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if representative is not None:
        # Post-training int8: weights and activations of the real-valued operations,
        # calibrated on training inputs; float input/output, so callers see no change.
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: ([x[None]] for x in representative)
    atomic_write_bytes(path, converter.convert())


def _write_lce(model: keras.Model, path: Path) -> None:
    # Binary layers become LCE's bitpacked operations (LceBconv2d, LceQuantize).
    atomic_write_bytes(path, lce_package().convert_keras_model(model))


_WRITERS: dict[str, Callable[[keras.Model, Path], None]] = {
    "keras": _write_keras, "saved_model": _write_saved_model, "tflite": _write_tflite,
    "lce": _write_lce}


# ---------------------------------------------------------------------------------------
# Checking: the export, loaded through its own runtime, against the trained model.
# ---------------------------------------------------------------------------------------


Examples = np.ndarray | None
REPRESENTATIVE_EXAMPLES = 256  # calibration inputs for --int8 (TF suggests a few hundred)


def split_examples(job: Any, split: str,
                   limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """:func:`bnn_cli.data.pipeline.split_examples` of the job's config."""
    spec = job.config.spec
    return data.split_examples(spec.data, split, batch_size=spec.training.batch_size,
                               data_dir=job.data_dir, limit=limit)


def split_inputs(job: Any) -> np.ndarray:
    """The config's whole test split as one array of (preprocessed) inputs."""
    return split_examples(job, job.config.spec.data.test_split)[0]


def agreement(expected: np.ndarray, actual: np.ndarray,
              labels: np.ndarray) -> dict[str, float | int]:
    """Top-1 agreement, the largest absolute difference of two prediction arrays, and
    each one's top-1 accuracy on ``labels``."""
    expected, actual = np.asarray(expected), np.asarray(actual)
    top_expected, top_actual = expected.argmax(-1), actual.argmax(-1)
    return {"examples": int(len(expected)),
            "top1_agreement": float(np.mean(top_expected == top_actual)),
            "max_prob_diff": float(np.max(np.abs(expected - actual))),
            "accuracy": float(np.mean(top_actual == labels)),
            "trained_accuracy": float(np.mean(top_expected == labels))}


# ---------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------


def export_target(target: str | Path, options: TargetOptions, *, fmt: str,
                  output: str | Path | None = None, latent: bool = False,
                  int8: bool = False) -> ExportReport:
    """Export a run directory / checkpoint / model file (as ``bnn eval`` resolves it) in
    ``fmt``, then check the written export against the trained model on the test split.

    ``int8`` (tflite only) quantizes the real-valued operations after training, calibrated
    on the config's training split."""
    _check_format(fmt, int8)
    job, label, run = load_trained(target, options)
    path = Path(output) if output else _default_output(Path(target), run, fmt, latent, int8)
    model = latent_model(job.model) if latent else inference_model(job.model)
    _make_folder(path.parent)
    with contextlib.redirect_stdout(sys.stderr):  # Keras prints "Saved artifact at ..."
        if int8:
            calibration, _ = split_examples(job, job.config.spec.data.train_split,
                                            REPRESENTATIVE_EXAMPLES)
            _write_tflite(model, path, calibration)
        else:
            _WRITERS[fmt](model, path)
    x, labels = split_examples(job, job.config.spec.data.test_split)
    result = agreement(job.model.predict(x, verbose=0), load(path, fmt=fmt).predict(x), labels)
    check_file = path.with_name(path.name + ".check.json")
    report = ExportReport(fmt, str(path), latent, int8, label, _size(path),
                          _float32_size(job.model), check_file=str(check_file), **result)
    if fmt == "lce":  # the file's binary operations against `bnn check`'s prediction

        report.binary_ops = check_export(model, path)
    atomic_write_json(check_file, report.as_dict())
    return report


def _check_format(fmt: str, int8: bool) -> None:
    """Refuse an unknown format, --int8 where it does not apply, or lce without its
    package, before any model is built."""
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use --format {' | '.join(FORMATS)}")
    if int8 and fmt != "tflite":
        raise UserError(f"--int8 applies to --format tflite (TensorFlow's post-training "
                        f"quantization), not {fmt}: LCE's converter calibrates int8 only "
                        "for models trained with fake-quantized int8 layers; drop --int8 "
                        "or use --format tflite")
    if fmt == "lce":
        lce_package()


def _default_output(target: Path, run: RunDir | None, fmt: str, latent: bool,
                    int8: bool) -> Path:
    """``RUN/export/model.tflite`` (``model-latent.*`` with --latent, ``model-int8.*``
    with --int8); beside a model file outside a run."""
    folder = run.path if run is not None else target.parent
    name = _FILE_NAMES[fmt]
    for flag, tag in ((latent, "latent"), (int8, "int8")):
        if flag:
            stem, dot, suffix = name.partition(".")
            name = f"{stem}-{tag}{dot}{suffix}"
    return folder / "export" / name


def _make_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the folder {folder}: {exc.strerror or exc}; choose "
                        "another with --output") from None


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _float32_size(model: keras.Model) -> int:
    """The size of the trained (latent, float32) model as a .keras file without optimizer,
    the baseline an export's size is read against."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "latent.keras"
        latent_model(model).save(path)
        return path.stat().st_size
