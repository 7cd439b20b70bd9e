"""The input pipeline: a TFDS split in, batches of ``(inputs, labels)`` out.

Every dataset comes from a TFDS data_dir and nothing is ever downloaded: a dataset that
is not prepared there is a :class:`~bnn_cli.errors.UserError` that says how to provide
it. The one exception is ``sklearn_digits`` (:mod:`bnn_cli.data.digits`), whose data ships
with scikit-learn; it is prepared into the data_dir on first use.

A split goes through: decode -> preprocessing (cast to float32, then the configured
rescale / resize / normalize steps) -> cache -> [training: shuffle] -> batch ->
[training: augmentation, on whole batches] -> [one-hot labels] -> prefetch. Caching sits
after the deterministic work and before the random work, so each epoch replays cached
tensors and only shuffles and augments anew.

Training randomness is seeded: the same ``seed`` gives the same order and the same
augmentations on every run (each epoch still differs from the one before); ``None``
draws fresh randomness.
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# TensorFlow must be loaded through bnn_cli._keras (legacy Keras, quiet C++ logs) before
# TFDS imports it, so the import order below is deliberate.
from bnn_cli._keras import tf

# isort: split
import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core import naming
from tensorflow_datasets.core.utils import file_utils

from bnn_cli.config import schema
from bnn_cli.data import digits
from bnn_cli.errors import UserError, did_you_mean

AUTOTUNE = tf.data.AUTOTUNE
EMBEDDED_DATASETS = frozenset({digits.NAME})
"""Datasets whose data ships with a Python package: prepared on first use, offline."""

Image = tf.Tensor
Example = dict[str, tf.Tensor]


@dataclass(frozen=True)
class DataInfo:
    """What a model builder and a training loop need to know about a dataset."""

    full_name: str  # TFDS name/[config/]version actually opened, e.g. "mnist/3.0.1"
    prepared_dir: str  # the folder the examples are read from
    num_classes: int | None  # None when the label is not a ClassLabel
    class_names: tuple[str, ...] | None
    input_shape: tuple[int | None, ...]  # one example as the model sees it
    split_sizes: dict[str, int]  # the dataset's own splits, e.g. {"train": 60000, ...}
    _splits: Any = field(repr=False, compare=False)  # TFDS SplitDict, for slices

    def num_examples(self, split: str) -> int:
        """Examples in ``split``, slices included (``"train[:90%]"``)."""
        return _split_size(self._splits, split, self.full_name)

    def steps_per_epoch(self, split: str, batch_size: int) -> int:
        """Batches in one pass over ``split`` (the last batch may be smaller)."""
        return math.ceil(self.num_examples(split) / batch_size)


def resolve_data_dir(config_dir: str | None, cli_dir: str | None) -> str | None:
    """The TFDS data_dir to use: ``--data-dir`` > config ``data_dir`` > ``$TFDS_DATA_DIR``.

    ``None`` means TFDS's own default (``~/tensorflow_datasets``).
    """
    for candidate in (cli_dir, config_dir, os.environ.get("TFDS_DATA_DIR")):
        if candidate:  # An empty value (e.g. ``TFDS_DATA_DIR=``) counts as unset.
            return os.path.expanduser(candidate)
    return None


def dataset_info(data: schema.DataConfig, data_dir: str | None) -> DataInfo:
    """Classes, input shape and split sizes of ``data.dataset`` (prepares embedded ones)."""
    builder = _open_builder(data, data_dir)
    info = builder.info
    label = info.features[data.label_key]
    names = getattr(label, "names", None)
    return DataInfo(
        full_name=info.full_name,
        prepared_dir=os.fspath(builder.data_dir),
        num_classes=getattr(label, "num_classes", None),
        class_names=tuple(names) if names else None,
        input_shape=_model_input_shape(info.features[data.input_key].shape, data),
        split_sizes={name: split.num_examples for name, split in info.splits.items()},
        _splits=info.splits,
    )


def load_split(
    data: schema.DataConfig,
    split: str,
    *,
    training: bool,
    batch_size: int,
    seed: int | None,
    data_dir: str | None,
) -> tf.data.Dataset:
    """Batches of ``(inputs, labels)`` from ``split``, shuffled and augmented if ``training``.

    The decoded, preprocessed examples are read once per process and cached; each call
    only adds the shuffle/batch/augment stages for its ``seed``.
    """
    batches = _batches_for_seed(data, split, training=training, batch_size=batch_size,
                                data_dir=data_dir)
    return _finished(batches(seed))


def split_examples(data: schema.DataConfig, split: str, *, batch_size: int,
                   data_dir: str | None, limit: int | None = None
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (preprocessed as for evaluation) and class labels (one-hot labels as
    classes) of a split, the first ``limit`` examples or all, as two arrays: what export
    checks its files on and what ``bnn predict --split`` predicts."""
    ds = load_split(data, split, training=False, batch_size=batch_size, seed=None,
                    data_dir=data_dir)
    if limit is not None:
        ds = ds.take(-(-limit // batch_size))
    pairs = list(ds.as_numpy_iterator())
    if not pairs or not isinstance(pairs[0][0], np.ndarray):
        raise UserError(f"split {split!r} gives no examples, or several inputs each; "
                        "this needs a model with one input and a non-empty split")
    x = np.concatenate([x for x, _ in pairs])[:limit]
    y = np.concatenate([y for _, y in pairs])[:limit]
    return x, (y.argmax(-1) if y.ndim > 1 else y)


def epoch_seed(seed: int | None, epoch: Any) -> Any:
    """The seed of one epoch's data order and augmentation (and of the layers' own
    randomness) in a run seeded with ``seed``; ``epoch`` may be a tensor."""
    return None if seed is None else seed * 1_000_003 + epoch


def training_epochs(
    data: schema.DataConfig,
    *,
    first: int,
    end: int,
    steps: int,
    batch_size: int,
    seed: int | None,
    data_dir: str | None,
) -> tf.data.Dataset:
    """Epochs ``first`` to ``end - 1`` of the training split back to back, ``steps``
    batches each, for one ``fit`` over all of them (one iterator: no per-epoch set-up).

    Each epoch is drawn in-graph from ``epoch_seed(seed, epoch)`` alone, so epoch 7 has
    the same batches whether the run started at epoch 0 or resumed at 5. That is why
    the global seed is unset here (the layers' seed is set again per epoch): dataset
    ops mix it into their own seeds, and TF's seed helper cannot mix a global seed of 0
    with a tensor seed.
    """
    tf.random.set_seed(None)
    batches = _batches_for_seed(data, data.train_split, training=True,
                                batch_size=batch_size, data_dir=data_dir)
    epochs = tf.data.Dataset.range(first, end)
    return _finished(epochs.flat_map(lambda e: batches(epoch_seed(seed, e)).take(steps)))


def _batches_for_seed(
    data: schema.DataConfig, split: str, *, training: bool, batch_size: int,
    data_dir: str | None,
) -> Callable[[Any], tf.data.Dataset]:
    """``seed -> batches`` of one pass over ``split``. The Python work (opening the
    builder, reading the cache) happens here, once; the function only adds the seeded
    stages, so it also runs in-graph with a tensor seed."""
    builder = _open_builder(data, data_dir)
    depth = _one_hot_depth(builder, data)
    arrays = _in_memory(builder, data, split, training)
    partial = training and 0 < data.shuffle_buffer < (0 if arrays is None else len(arrays[1]))
    examples = None if arrays is not None and not partial else \
        _examples(builder, data, split, training)

    def batches(seed: Any) -> tf.data.Dataset:
        if examples is None:
            # Whole batches gathered from one tensor: no per-example work at all.
            ds = _batches_of(arrays, batch_size,
                             shuffle=training and data.shuffle_buffer > 0, seed=seed)
        else:
            ds = examples
            if training and data.shuffle_buffer:
                ds = ds.shuffle(data.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
            ds = ds.batch(batch_size, num_parallel_calls=AUTOTUNE)
        if training and data.augmentation:
            ds = _augment(ds, data, seed)
        if depth is not None:
            ds = ds.map(lambda x, y: (x, tf.one_hot(y, depth)), num_parallel_calls=AUTOTUNE)
        return ds

    return batches


def _finished(ds: tf.data.Dataset) -> tf.data.Dataset:
    return ds.prefetch(AUTOTUNE).with_options(dataset_options())


def dataset_options() -> tf.data.Options:
    """How a strategy shards the input pipeline across workers.

    ``DATA``, deliberately: every worker builds the same pipeline (the split read from
    its TFDS files into an in-memory cache in file order, the same seeded shuffle), and
    each global batch is then divided among the workers. So a step sees exactly the
    global batch that a one-process run sees, and the results agree; a resumed worker
    replays the same batches. ``FILE`` sharding would give each worker other files:
    other cached examples and another shuffle than one process, and an error for the
    single-file splits of small datasets (fewer files than workers). Its saving, not
    reading each file on every worker, matters only for datasets too large to cache in
    memory, which this pipeline does not support anyway. Without a multi-worker strategy
    the option does nothing (one worker holds every shard).
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    return options


_EXAMPLES: dict[tuple, tf.data.Dataset] = {}


def _cache_key(builder: tfds.core.DatasetBuilder, data: schema.DataConfig, split: str,
               training: bool) -> tuple:
    return (builder.info.full_name, str(builder.data_dir), split, training,
            data.model_dump_json(include={"input_key", "label_key", "preprocessing",
                                          "augmentation", "cache"}))


def _examples(builder: tfds.core.DatasetBuilder, data: schema.DataConfig, split: str,
              training: bool) -> tf.data.Dataset:
    """Decoded, preprocessed (unbatched) examples of a split, cached; memoized per process.

    Files are read in their stored order (not shuffled): the cache's content, and so
    every later seeded shuffle, must not depend on which epoch first filled it.
    """
    key = _cache_key(builder, data, split, training)
    if key not in _EXAMPLES:
        _split_size(builder.info.splits, split, builder.info.full_name)
        _model_input_shape(builder.info.features[data.input_key].shape, data)  # crops fit
        ds = builder.as_dataset(
            split=split,
            shuffle_files=False,
            # Our own cache sits after preprocessing; TFDS's would hold raw copies.
            read_config=tfds.ReadConfig(try_autocache=False),
        )
        ds = ds.map(_example_fn(data, training), num_parallel_calls=AUTOTUNE)
        if data.cache:
            ds = ds.cache()
            _fill(ds, f"{builder.info.full_name} {split}")
        _EXAMPLES[key] = ds
    return _EXAMPLES[key]


_ARRAYS: dict[tuple, tuple[tf.Tensor, tf.Tensor] | None] = {}

IN_MEMORY_BYTES = 2**31
"""The largest cached split held as one tensor (MNIST's training images take 188 MB)."""


def _in_memory(builder: tfds.core.DatasetBuilder, data: schema.DataConfig, split: str,
               training: bool) -> tuple[tf.Tensor, tf.Tensor] | None:
    """A cached split's preprocessed examples as two tensors (inputs, labels), or None
    where the split is not cached, its examples differ in shape, or it is too large."""
    if not data.cache:
        return None
    ds = _examples(builder, data, split, training)
    key = _cache_key(builder, data, split, training)
    if key not in _ARRAYS:
        spec = ds.element_spec[0]
        count = _split_size(builder.info.splits, split, builder.info.full_name)
        if not spec.shape.is_fully_defined() or \
                count * spec.shape.num_elements() * spec.dtype.size > IN_MEMORY_BYTES:
            _ARRAYS[key] = None
        else:
            _ARRAYS[key] = next(iter(ds.batch(max(count, 1))))
    return _ARRAYS[key]


def _batches_of(arrays: tuple[tf.Tensor, tf.Tensor], batch_size: int, *, shuffle: bool,
                seed: int | None) -> tf.data.Dataset:
    """Batches of ``arrays`` in their order, or shuffled as Keras shuffles NumPy arrays:
    one permutation of the indices per pass, each batch one gather. The permutation of
    each pass is drawn from ``seed`` (a resumed epoch gets the same order), and is new
    on each further pass over the dataset, like ``shuffle(reshuffle_each_iteration)``."""
    images, labels = arrays
    count = tf.shape(labels, out_type=tf.int64)[0]
    order = tf.data.Dataset.range(count)
    if shuffle:
        def permutation(draw: tf.Tensor) -> tf.data.Dataset:
            pair = tf.stack([draw, tf.constant(0, tf.int64)])
            return tf.data.Dataset.from_tensor_slices(
                tf.random.experimental.stateless_shuffle(tf.range(count), seed=pair))

        order = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True) \
            .take(1).flat_map(permutation)
    return order.batch(batch_size).map(
        lambda i: (tf.gather(images, i), tf.gather(labels, i)), num_parallel_calls=AUTOTUNE)


def _fill(cached: tf.data.Dataset, what: str) -> None:
    """Read a cached dataset once to the end, so its cache is complete and final.

    Later pipelines share it; one that stops early (``steps_per_epoch``) or overlaps
    with another must never meet a half-written cache.
    """
    sys.stderr.write(f"reading {what} into memory...\n")
    for _ in cached.batch(4096).prefetch(AUTOTUNE):
        pass


# --- opening a dataset, and the errors a user can act on -----------------------------


def _open_builder(data: schema.DataConfig, data_dir: str | None) -> tfds.core.DatasetBuilder:
    """The prepared TFDS builder for ``data.dataset``, or a UserError saying why not."""
    name = _parse_name(data.dataset)
    try:
        builder = tfds.builder(data.dataset, data_dir=data_dir)
    except tfds.core.DatasetNotFoundError:
        raise _unknown_dataset(data.dataset, name, data_dir) from None
    except (AssertionError, ValueError) as err:  # TFDS's way to reject a version/config
        raise UserError(
            f"cannot open dataset {data.dataset!r}: {_first_line(err)}"
            f"{_versions_hint(name, data_dir)}"
        ) from None
    if not builder.is_prepared() and name in EMBEDDED_DATASETS:
        _prepare_embedded(builder, data_dir)
    if not builder.is_prepared():
        raise _not_prepared(data.dataset, builder, data_dir)
    _check_keys(builder, data)
    return builder


def _parse_name(dataset: str) -> str:
    """The bare builder name of ``"mnist:3.0.1"`` (``"mnist"``), refusing remote namespaces."""
    try:
        name, _ = naming.parse_builder_name_kwargs(dataset)
    except ValueError as err:
        raise DatasetNameError(f"invalid dataset name {dataset!r}: {_first_line(err)}") \
            from None
    if name.namespace:
        # Namespaced datasets (huggingface:, kaggle:, community) are fetched from the
        # network by TFDS, which this tool never does.
        raise DatasetNameError(
            f"dataset {dataset!r} names the remote namespace {name.namespace!r}; only "
            "datasets prepared in a local TFDS data_dir are supported (write versions "
            "as 'name:1.2.3', e.g. 'mnist:3.0.1')"
        )
    return name.name


def _prepare_embedded(builder: tfds.core.DatasetBuilder, data_dir: str | None) -> None:
    """Write an embedded dataset into the data_dir; it reads local files, never the network."""
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    try:
        # TFDS prints its progress to stdout; keep stdout for results (`--json`).
        with contextlib.redirect_stdout(sys.stderr):
            builder.download_and_prepare(download_config=config)
    except OSError as err:
        raise UserError(
            f"could not prepare dataset {builder.name!r} into {_where(data_dir)}: {err}; "
            "point `data_dir` (config), `--data-dir` or $TFDS_DATA_DIR at a writable folder"
        ) from None


class DatasetNameError(UserError):
    """``data.dataset`` names nothing TFDS can open here: a mistake in the config, which
    the config check reports at the key (file:line), as it reports its other keys."""

    key = "dataset"


def _unknown_dataset(dataset: str, name: str, data_dir: str | None) -> UserError:
    known = tfds.list_builders(with_community_datasets=False)
    return DatasetNameError(
        f"unknown dataset {dataset!r}{did_you_mean(name, known)} (TFDS has no builder of "
        f"that name, and no prepared copy was found in {_where(data_dir)})"
    )


def _not_prepared(
    dataset: str, builder: tfds.core.DatasetBuilder, data_dir: str | None
) -> UserError:
    return UserError(
        f"dataset {builder.name!r} version {builder.version} (from {dataset!r}) is not "
        f"prepared in the TFDS data_dir {_where(data_dir)}, and this tool never downloads. "
        f"To provide it, run `tfds build {builder.name}` (or `tfds.load({builder.name!r})`) "
        "on a machine with internet access, copy the resulting data_dir folder to this "
        "machine, and point `data_dir` in the config, `--data-dir` or $TFDS_DATA_DIR at it"
        f"{_versions_hint(builder.name, data_dir)}."
    )


def _where(data_dir: str | None) -> str:
    """The data_dir(s) TFDS searches, for messages."""
    dirs = [os.fspath(d) for d in file_utils.list_data_dirs(data_dir)]
    return ", ".join(dirs) if data_dir else f"{', '.join(dirs)} (the TFDS default)"


def _versions_hint(name: str, data_dir: str | None) -> str:
    """``"; versions found there: 3.0.0 (select one as 'mnist:3.0.0')"`` or ``""``."""
    found = sorted(
        {
            entry.name
            for root in file_utils.list_data_dirs(data_dir)
            if (Path(root) / name).is_dir()
            for entry in (Path(root) / name).iterdir()
            if tfds.core.Version.is_valid(entry.name)
        }
    )
    if not found:
        return ""
    return f"; versions found there: {', '.join(found)} (select one as '{name}:{found[-1]}')"


def _first_line(err: Exception) -> str:
    """The gist of a TFDS error, to embed in a sentence of ours."""
    text = str(err).strip()
    if not text:
        return type(err).__name__
    # TFDS can append long listings (every known dataset): the first line says it.
    line = text.splitlines()[0]
    # "Failed to construct dataset "x", builder_kwargs "{...}": <the actual reason>"
    if line.startswith("Failed to construct") and '": ' in line:
        line = line.split('": ', 1)[1]
    return line.rstrip(".")


def _check_keys(builder: tfds.core.DatasetBuilder, data: schema.DataConfig) -> None:
    features = list(builder.info.features.keys())
    for role, key in (("input_key", data.input_key), ("label_key", data.label_key)):
        if key not in features:
            raise UserError(
                f"{role} {key!r} is not a feature of dataset {builder.info.full_name!r}; "
                f"its features are: {', '.join(features)}{did_you_mean(key, features)}"
            )


def _split_size(splits: Any, split: str, full_name: str) -> int:
    """Examples in ``split`` of a TFDS SplitDict, or a UserError naming the real splits."""
    available = ", ".join(f"{s} ({info.num_examples})" for s, info in splits.items())
    try:
        size = splits[split].num_examples
    except (KeyError, ValueError, AssertionError) as err:
        raise UserError(
            f"bad split {split!r} for dataset {full_name!r}: {_first_line(err)}; available "
            f"splits: {available}; slices like 'train[:90%]' or 'train[1000:]' work too"
        ) from None
    if size == 0:
        raise UserError(f"split {split!r} of dataset {full_name!r} has no examples")
    return size


def _one_hot_depth(builder: tfds.core.DatasetBuilder, data: schema.DataConfig) -> int | None:
    if not data.one_hot:
        return None
    depth = getattr(builder.info.features[data.label_key], "num_classes", None)
    if depth is None:
        raise UserError(
            f"one_hot needs a class label, but {data.label_key!r} of dataset "
            f"{builder.info.full_name!r} is not a ClassLabel feature"
        )
    return depth


# --- the per-example transformations -------------------------------------------------


def _model_input_shape(
    feature_shape: tuple[int | None, ...], data: schema.DataConfig
) -> tuple[int | None, ...]:
    """The shape of one preprocessed example: resize and crops set height and width."""
    shape = tuple(feature_shape)
    for step in [*data.preprocessing, *data.augmentation]:
        if isinstance(step, schema.Resize | schema.RandomCrop):
            if len(shape) != 3:
                raise UserError(
                    f"{step.type} needs images of shape (height, width, channels), but "
                    f"{data.input_key!r} has shape {shape}"
                )
            if isinstance(step, schema.RandomCrop):
                _check_crop_fits(step, shape, data.input_key)
            shape = (step.height, step.width, shape[2])
    return shape


def _check_crop_fits(step: schema.RandomCrop, shape: tuple[int | None, ...], key: str) -> None:
    """A random crop must fit inside the (padded) image; TF would fail mid-epoch."""
    pad = 2 * step.padding
    pairs = ((step.height, shape[0]), (step.width, shape[1]))
    if any(dim is not None and size > dim + pad for size, dim in pairs):
        raise UserError(
            f"random_crop of {step.height}x{step.width} does not fit the {key!r} images "
            f"of {shape[0]}x{shape[1]} padded by {step.padding}; make the crop smaller "
            "or the padding larger"
        )


def _preprocess_step(step: schema.PreprocessStep) -> Callable[[Image], Image]:
    """One deterministic preprocessing step as a function on a float32 image."""
    if isinstance(step, schema.Rescale):
        low, high = step.range
        # Divide first: max_value / max_value is exactly 1.0, so the ends of the range
        # come out exact (e.g. exactly -1 and 1); a fused scale factor can miss by an ulp.
        return lambda x: x / step.max_value * (high - low) + low
    if isinstance(step, schema.Resize):
        return lambda x: tf.image.resize(x, (step.height, step.width), method=step.method)
    mean = tf.constant(step.mean, tf.float32)
    std = tf.constant(step.std, tf.float32)
    return lambda x: (x - mean) / std


def _preprocess_fn(data: schema.DataConfig, training: bool) -> Callable[[Image], Image]:
    """Cast to float32, then the preprocessing steps in order.

    Outside training each random crop becomes its deterministic counterpart, a centre
    crop (as Keras's RandomCrop layer does at inference), so evaluation batches have the
    shape the model was trained on.
    """
    steps = [_preprocess_step(step) for step in data.preprocessing]
    if not training:
        steps += [_center_crop(s) for s in data.augmentation if isinstance(s, schema.RandomCrop)]

    def preprocess(x: Image) -> Image:
        x = tf.cast(x, tf.float32)
        for step in steps:
            x = step(x)
        return x

    return preprocess


def preprocess_images(data: schema.DataConfig, images: Any) -> tf.Tensor:
    """A batch of raw images (as the dataset stores them: its dtype, value range and
    shape) -> model inputs, preprocessed exactly as evaluation preprocesses a split."""
    preprocess = _preprocess_fn(data, training=False)
    # Mapped one example at a time, as the split pipeline maps them.
    return tf.map_fn(preprocess, tf.convert_to_tensor(images), fn_output_signature=tf.float32)


def _center_crop(step: schema.RandomCrop) -> Callable[[Image], Image]:
    return lambda x: tf.image.resize_with_crop_or_pad(x, step.height, step.width)


def _example_fn(
    data: schema.DataConfig, training: bool
) -> Callable[[Example], tuple[Image, tf.Tensor]]:
    """Decoded TFDS example dict -> ``(preprocessed input, label)``."""
    preprocess = _preprocess_fn(data, training)
    return lambda ex: (preprocess(ex[data.input_key]), ex[data.label_key])


def _augment(ds: tf.data.Dataset, data: schema.DataConfig, seed: int | None) -> tf.data.Dataset:
    """Augment whole batches: a few ops per batch cost far less than a few per example."""
    # Each batch gets its own stateless seed from a seeded stream, so augmentation is
    # reproducible under parallel map, yet different every epoch. The stream's seed is
    # offset from the shuffle's so the two do not draw the same numbers.
    seeds = tf.data.Dataset.random(
        seed=None if seed is None else seed + 1, rerandomize_each_iteration=True
    ).batch(2)
    augment = _augment_fn(data)
    ds = tf.data.Dataset.zip((ds, seeds))
    return ds.map(lambda xy, s: (augment(xy[0], s), xy[1]), num_parallel_calls=AUTOTUNE)


def _augment_fn(data: schema.DataConfig) -> Callable[[Image, tf.Tensor], Image]:
    """The augmentation steps as one function of (image batch, stateless seed [2])."""
    fill = _padding_fill(data)
    steps = [_augment_step(step, fill) for step in data.augmentation]

    def augment(x: Image, seed: tf.Tensor) -> Image:
        step_seeds = tf.random.experimental.stateless_split(seed, num=len(steps))
        for i, step in enumerate(steps):
            x = step(x, step_seeds[i])
        return x

    return augment


def _padding_fill(data: schema.DataConfig) -> Callable[[Any], Image]:
    """What a black (0) pixel becomes after preprocessing: the value crops pad with.

    Padding the preprocessed image with this matches the usual recipe of padding the raw
    image with black (e.g. -1 after a [-1, 1] rescale, not the 0 of mid-grey).
    """
    # Resizing maps a constant image to the same constant, so only the pointwise steps
    # matter; applied to one black pixel they keep any per-channel normalization.
    pointwise = [
        _preprocess_step(step)
        for step in data.preprocessing
        if not isinstance(step, schema.Resize)
    ]

    def fill(channels: Any) -> Image:
        x = tf.zeros([1, 1, channels], tf.float32)
        for step in pointwise:
            x = step(x)
        return x

    return fill


def _augment_step(
    step: schema.AugmentStep, fill: Callable[[Any], Image]
) -> Callable[[Image, tf.Tensor], Image]:
    if isinstance(step, schema.RandomFlip):
        return lambda x, seed: _random_flip(x, step.mode, seed)
    return lambda x, seed: _random_crop(x, step, fill, seed)


def _random_flip(x: Image, mode: str, seed: tf.Tensor) -> Image:
    """Mirror each image of the batch [B, H, W, C] with probability 1/2 per direction."""
    lr_seed, ud_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if mode in ("horizontal", "horizontal_and_vertical"):
        x = _flip_some(x, axis=2, seed=lr_seed)
    if mode in ("vertical", "horizontal_and_vertical"):
        x = _flip_some(x, axis=1, seed=ud_seed)
    return x


def _flip_some(x: Image, axis: int, seed: tf.Tensor) -> Image:
    flip = tf.random.stateless_uniform([tf.shape(x)[0]], seed) < 0.5
    return tf.where(flip[:, None, None, None], tf.reverse(x, [axis]), x)


def _random_crop(
    x: Image, step: schema.RandomCrop, fill: Callable[[Any], Image], seed: tf.Tensor
) -> Image:
    """Pad, then cut a height x width window at a random place in each image of the batch."""
    channels = x.shape[-1] if x.shape[-1] is not None else tf.shape(x)[-1]
    if step.padding:
        # Pad (x - fill) with zeros and add fill back: a per-channel constant padding.
        p = step.padding
        value = fill(channels)
        x = tf.pad(x - value, [[0, 0], [p, p], [p, p], [0, 0]]) + value
    top_seed, left_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    rows = _window_indices(tf.shape(x)[0], tf.shape(x)[1], step.height, top_seed)
    cols = _window_indices(tf.shape(x)[0], tf.shape(x)[2], step.width, left_seed)
    # Gathering rows, then columns, per image: an exact crop (no interpolation).
    x = tf.gather(x, rows, axis=1, batch_dims=1)
    x = tf.gather(x, cols, axis=2, batch_dims=1)
    return tf.ensure_shape(x, (None, step.height, step.width, x.shape[-1]))


def _window_indices(batch: tf.Tensor, length: tf.Tensor, size: int, seed: tf.Tensor) -> tf.Tensor:
    """[batch, size] indices of a window of ``size`` at a uniform random start in ``length``."""
    start = tf.random.stateless_uniform(
        [batch], seed, minval=0, maxval=length - size + 1, dtype=tf.int32
    )
    return start[:, None] + tf.range(size)
