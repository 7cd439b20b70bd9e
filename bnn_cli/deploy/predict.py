"""``bnn predict``: the most probable classes that a trained model or an exported file
gives image files or a split's examples, with the dataset's class names.

A run directory (or a checkpoint) is built from its checked config as ``bnn eval`` builds
it; an exported file runs through its own runtime (:mod:`bnn_cli.deploy.runtimes`), so it
answers as it would on a device. Either way the config says how inputs are
preprocessed: image files are first brought to the form the dataset stores (its
channels, height, width and pixel type), then preprocessed exactly as evaluation
preprocesses a split. Nothing is written anywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bnn_cli._keras import tf
from bnn_cli.assemble import test_time
from bnn_cli.assemble.check import CheckedConfig
from bnn_cli.data import pipeline as data
from bnn_cli.deploy.runtimes import load
from bnn_cli.deploy.targets import TargetOptions, checked_config, is_exported_file, load_trained
from bnn_cli.errors import UserError
from bnn_cli.rundir.run import find_run_dir

IMAGE_KINDS = "PNG, JPEG, BMP or GIF"
_PROBABILITY_SLACK = 0.05  # rows of an int8 model's dequantized softmax sum to 1 +- this


@dataclass
class Prediction:
    input: str  # the image file, or "SPLIT #i" for the i-th example of a split
    top: list[dict[str, Any]]  # {"class", "name", "probability"}, most probable first
    label: int | None = None  # the true class (examples of a split)
    label_name: str | None = None
    changes: list[str] = field(default_factory=list)  # what the image needed, e.g. resized


@dataclass
class PredictReport:
    target: str
    model: str  # what answered, e.g. "checkpoint epoch-0003" or "tflite file"
    split: str | None
    top_k: int
    num_classes: int
    predictions: list[Prediction]
    note: str | None = None  # e.g. that scores were turned into probabilities

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    def print(self) -> None:
        print(f"{self.target} ({self.model}): top {self.top_k} of {self.num_classes} "
              "classes")
        if self.note:
            print(f"note: {self.note}")
        for p in self.predictions:
            ranked = " | ".join(f"{c['name']} {c['probability']:.2%}" for c in p.top)
            truth = f"  (true: {p.label_name})" if p.label is not None else ""
            print(f"{p.input}: {ranked}{truth}")
            if p.changes:
                print(f"  ({', '.join(p.changes)})")


# ---------------------------------------------------------------------------------------
# The command.
# ---------------------------------------------------------------------------------------


def predict_target(target: str | Path, options: TargetOptions,
                   inputs: Sequence[str | Path] = (), *, split: str | None = None,
                   top_k: int = 3) -> PredictReport:
    """Top-``top_k`` classes for image files (``inputs``) or the examples of ``split``,
    from a run directory, a checkpoint or an exported file."""
    _check_request(inputs, split, top_k)
    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such file or directory; give a run directory, a "
                        "checkpoint of one, or a file that `bnn export` wrote")
    images = [(str(path), _decode(Path(path))) for path in inputs]  # fail fast, pre-model
    model = _load_model(target, options)
    if split is not None:
        names, x, labels, changes = _split_examples(model.checked, split)
    else:
        names, x, changes = _image_inputs(model.checked, images)
        labels = [None] * len(names)
    probabilities, note = _probabilities(model.predict(x))
    classes = _class_names(model.checked, probabilities.shape[1])
    k = min(top_k, len(classes))
    predictions = [_prediction(*row, classes, k) for row in
                   zip(names, probabilities, labels, changes, strict=True)]
    return PredictReport(str(target), model.what, split, k, len(classes), predictions, note)


def _check_request(inputs: Sequence[str | Path], split: str | None, top_k: int) -> None:
    if inputs and split is not None:
        raise UserError("give image files or --split, not both: image files are predicted "
                        "on their own, --split predicts examples of the config's dataset")
    if not inputs and split is None:
        raise UserError(f"nothing to predict: give image files ({IMAGE_KINDS}) after the "
                        "target, or --split SPLIT for examples of the config's dataset "
                        "(e.g. --split 'test[:10]')")
    if top_k < 1:
        raise UserError(f"--top-k must be at least 1, not {top_k}")


# ---------------------------------------------------------------------------------------
# What answers: a trained model or an exported file, with the config it was trained on.
# ---------------------------------------------------------------------------------------


@dataclass
class _Model:
    predict: Callable[[np.ndarray], np.ndarray]
    checked: CheckedConfig  # how inputs are preprocessed, what classes are called
    what: str


def _load_model(target: Path, options: TargetOptions) -> _Model:
    if is_exported_file(target):
        # The config first: its plugins must be registered before a .keras file is read.
        run = find_run_dir(target.parent)  # (`bnn export` writes into RUN/export/)
        checked = checked_config(target, run, options)
        source = f"config {options.config}" if options.config else f"config of run {run.path}"
        runtime = load(target)
        predict = test_time.averaged(runtime.predict,
                                     checked.spec.data.test_time_augmentation)
        return _Model(predict, checked, f"{runtime.name} file, {source}")
    job, label, _ = load_trained(target, options)
    what = f"checkpoint {label}" if label else "model file"
    return _Model(lambda x: job.scoring_model.predict(x, verbose=0), job.checked, what)


# ---------------------------------------------------------------------------------------
# Inputs: a split's examples, or image files in the dataset's form.
# ---------------------------------------------------------------------------------------


def _split_examples(checked: CheckedConfig, split: str
                    ) -> tuple[list[str], np.ndarray, list[int], list[list[str]]]:
    """Names, preprocessed inputs, true labels (and no changes) of a split's examples."""

    spec = checked.spec
    x, labels = data.split_examples(spec.data, split, batch_size=spec.training.batch_size,
                                    data_dir=checked.data_dir)
    return ([f"{split} #{i}" for i in range(len(x))], x, [int(y) for y in labels],
            [[] for _ in x])


def _decode(path: Path) -> tf.Tensor:
    """The image in ``path`` as float32 in [0, 1], shape (height, width, channels)."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path}: no such file; give image files ({IMAGE_KINDS}) or "
                        "--split SPLIT") from None
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}; give image files "
                        f"({IMAGE_KINDS})") from None
    try:
        # float32 scales any bit depth (8- or 16-bit PNGs) onto [0, 1]; a GIF gives its
        # first frame.
        return tf.io.decode_image(raw, dtype=tf.float32, expand_animations=False)
    except (tf.errors.InvalidArgumentError, ValueError):
        raise UserError(f"{path} is not an image file TensorFlow can decode ({IMAGE_KINDS}); "
                        "give image files, or --split SPLIT for examples of the "
                        "config's dataset") from None


def _image_inputs(checked: CheckedConfig, images: list[tuple[str, tf.Tensor]]
                  ) -> tuple[list[str], np.ndarray, list[list[str]]]:
    """Names, preprocessed inputs and what each image needed to match the dataset."""

    feature = _input_feature(checked)
    converted = [_to_dataset_form(image, feature) for _, image in images]
    # One at a time: images of a folder may differ in size until preprocessed.
    x = np.concatenate([data.preprocess_images(checked.spec.data, image[None]).numpy()
                        for image, _ in converted])
    return [name for name, _ in images], x, [changes for _, changes in converted]


def _input_feature(checked: CheckedConfig) -> Any:
    """The TFDS feature the model's input comes from (its shape and dtype)."""
    import tensorflow_datasets as tfds

    key = checked.spec.data.input_key
    if checked.data.kind == "image_folder":  # 8-bit files of the folder's shape
        raw = data.open_source(checked.spec.data, checked.data_dir).info.input_shape
        return tfds.features.Image(shape=raw)
    builder = tfds.builder_from_directory(checked.data.prepared_dir)  # (the one checked)
    feature = builder.info.features[key]
    if len(feature.shape) != 3:
        raise UserError(f"the input {key!r} of dataset {builder.info.full_name!r} has shape "
                        f"{feature.shape}, not (height, width, channels), so image files "
                        "cannot stand for it; use --split SPLIT")
    return feature


def _to_dataset_form(image: tf.Tensor, feature: Any) -> tuple[tf.Tensor, list[str]]:
    """``image`` (float32, [0, 1]) with the feature's channels, height, width and pixel
    values (e.g. uint8 0..255), and a note of each change made."""
    height, width, channels = feature.shape
    image, changes = _convert_channels(image, channels)
    have = tuple(image.shape[:2])
    want = (height or have[0], width or have[1])  # (None: the dataset's sizes vary)
    if have != want:
        # Antialiased: a large photo shrunk to 8x8 keeps its shapes, not its aliasing.
        image = tf.clip_by_value(tf.image.resize(image, want, antialias=True), 0.0, 1.0)
        changes.append(f"resized {have[0]}x{have[1]} -> {want[0]}x{want[1]}")
    return _to_pixels(image, np.dtype(feature.np_dtype)), changes


def _convert_channels(image: tf.Tensor, channels: int | None) -> tuple[tf.Tensor, list[str]]:
    have = image.shape[-1]
    if channels is None or have == channels:
        return image, []
    changes = []
    if have in (2, 4):  # an alpha channel: the model knows none
        image, have = image[..., :have - 1], have - 1
        changes.append("alpha channel dropped")
    if have == 3 and channels == 1:
        image = tf.image.rgb_to_grayscale(image)
        changes.append("RGB -> grayscale")
    elif have == 1 and channels == 3:
        image = tf.image.grayscale_to_rgb(image)
        changes.append("grayscale -> RGB")
    elif have != channels:
        raise UserError(f"an image with {have} channels cannot be converted to the "
                        f"dataset's {channels}")
    return image, changes


def _to_pixels(image: tf.Tensor, dtype: np.dtype) -> tf.Tensor:
    """[0, 1] floats as the dataset stores pixels: an integer type's full range (uint8
    0..255 for TFDS images), or floats in [0, 1]."""
    if not np.issubdtype(dtype, np.integer):
        return tf.cast(image, dtype)
    top = float(np.iinfo(dtype).max)
    # Rounded, so an 8-bit file of a uint8 dataset comes back exactly as stored.
    return tf.cast(tf.round(image * top), dtype)


# ---------------------------------------------------------------------------------------
# Outputs.
# ---------------------------------------------------------------------------------------


def _probabilities(scores: np.ndarray) -> tuple[np.ndarray, str | None]:
    """Class probabilities, one row an example; a softmax of them (said in the note)
    when the model ends without one."""
    scores = np.asarray(scores, np.float64)
    if scores.ndim != 2:
        raise UserError(f"the model gives outputs of shape {scores.shape[1:]} an example; "
                        "`bnn predict` needs one score per class")
    if (scores >= 0).all() and np.allclose(scores.sum(-1), 1.0, atol=_PROBABILITY_SLACK):
        return scores, None
    exp = np.exp(scores - scores.max(-1, keepdims=True))
    return exp / exp.sum(-1, keepdims=True), ("the model's outputs are not probabilities "
                                              "(no softmax at its end); shown: their softmax")


def _class_names(checked: CheckedConfig, num_classes: int) -> list[str]:
    """The dataset's class names (its label's ClassLabel names), else the indices."""
    names = checked.data.class_names
    if names and len(names) == num_classes:
        return list(names)
    return [str(i) for i in range(num_classes)]


def _prediction(name: str, row: np.ndarray, label: int | None, changes: list[str],
                classes: list[str], k: int) -> Prediction:
    order = np.argsort(-row, kind="stable")[:k]  # ties: the lower class first
    top = [{"class": int(c), "name": classes[c], "probability": float(row[c])}
           for c in order]
    if label is None:
        return Prediction(name, top, changes=changes)
    label_name = classes[label] if 0 <= label < len(classes) else str(label)
    return Prediction(name, top, label, label_name, changes)
