"""The input pipeline: a split of a dataset in, batches of ``(inputs, labels)`` out.

The dataset is opened by :mod:`bnn_cli.data.sources` (TFDS, a TFDS directory, or a
folder of images); :mod:`bnn_cli.data.steps` turns the data section's steps into the
functions below. A split goes through two stages per example and one per batch:

1. *fixed*: read (a TFDS example; a folder's file) -> decode -> the preprocessing steps
   (float32; rescale, resize, crops, normalize) -> [cache];
2. *random*, training only, where the first augmentation step is a
   ``random_resized_crop``: then stage 1 only reads (the cache holds encoded files), and
   this stage decodes each file inside its random window (decode-and-crop), resizes
   it and applies the preprocessing;
3. [training: shuffle] -> batch -> [training: the other augmentation steps, on whole
   batches] -> [one-hot labels] -> prefetch.

Evaluation never runs stage 2: each random crop becomes its deterministic counterpart
in stage 1 (``random_resized_crop``: the centre ``eval_crop_fraction`` of the shorter
side; ``random_crop``: the centre window, as Keras's layers do at inference).

Caching (``data.cache``, by default ``auto``) holds stage 1's output in memory when it
fits ``cache_budget_mb``; every epoch then replays it and only shuffles and augments
anew. A folder's files are shuffled as a list, a whole permutation per epoch; a TFDS
split streams through the ``shuffle_buffer``.

Training randomness is seeded: the same ``seed`` gives the same order and the same
augmentations on every run (each epoch still differs from the one before, and an epoch
is drawn from ``(seed, epoch)`` alone, so a resumed run replays it); ``None`` draws
fresh randomness.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

# TensorFlow must be loaded through bnn_cli._keras (legacy Keras, quiet C++ logs) before
# TFDS imports it, so the import order below is deliberate.
from bnn_cli._keras import tf

# isort: split
import numpy as np
import tensorflow_datasets as tfds

from bnn_cli.config import schema
from bnn_cli.data import images
from bnn_cli.data.sources import (
    DataInfo,
    DataKeyError,
    DatasetNameError,
    Source,
    dataset_path,
    open_source,
    resolve_data_dir,
)
from bnn_cli.data.steps import Steps, fill_value, model_input_shape
from bnn_cli.errors import UserError, error_text, listed

__all__ = ["DataInfo", "DataKeyError", "DatasetNameError", "Shard", "dataset_info",
           "dataset_options", "dataset_path", "decoding_failure", "epoch_seed", "load_split",
           "open_source", "preprocess_images", "resolve_data_dir", "split_examples",
           "training_epochs", "training_files"]

AUTOTUNE = tf.data.AUTOTUNE
MB = 2**20
Image = tf.Tensor
Pair = tuple[tf.Tensor, tf.Tensor]


def dataset_info(data: schema.DataConfig, data_dir: str | None) -> DataInfo:
    """The dataset's classes and splits, with the input shape the model sees: what the
    preprocessing makes of its images. The data section's steps are checked here."""
    info = open_source(data, data_dir).info
    return dataclasses.replace(info, input_shape=model_input_shape(info, data))


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

    The fixed stage is built (and cached) once per process; each call only adds the
    seeded stages for its ``seed``.
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
    shard: Shard | None = None,
) -> tf.data.Dataset:
    """Epochs ``first`` to ``end - 1`` of the training split back to back, ``steps``
    batches each, for one ``fit`` over all of them (one iterator: no per-epoch set-up);
    of ``shard``'s files only, where given (``batch_size`` is then its batch).

    Each epoch is drawn in-graph from ``epoch_seed(seed, epoch)`` alone, so epoch 7 has
    the same batches whether the run started at epoch 0 or resumed at 5. That is why
    the global seed is unset here (the layers' seed is set again per epoch): dataset
    ops mix it into their own seeds, and TF's seed helper cannot mix a global seed of 0
    with a tensor seed.
    """
    tf.random.set_seed(None)
    batches = _batches_for_seed(data, data.train_split, training=True,
                                batch_size=batch_size, data_dir=data_dir, shard=shard)
    epochs = tf.data.Dataset.range(first, end)
    return _finished(epochs.flat_map(lambda e: batches(epoch_seed(seed, e)).take(steps)))


def training_files(data: schema.DataConfig, data_dir: str | None) -> int:
    """How many files each epoch reads the training split from; 0 where it is held in
    memory (cached, or arrays). A multi-worker job with at least as many files as
    workers gives each worker its own files (:class:`Shard`)."""
    source = open_source(data, data_dir)
    steps = Steps(data, training=True, channels=_channels(source, data))
    return _split(source, data, data.train_split, steps).files


def preprocess_images(data: schema.DataConfig, images_: Any) -> tf.Tensor:
    """A batch of raw images (as the dataset stores them: its dtype, value range and
    shape) -> model inputs, preprocessed exactly as evaluation preprocesses a split."""
    fixed = Steps(data, training=False, channels=None).fixed
    # Mapped one example at a time, as the split pipeline maps them.
    return tf.map_fn(fixed, tf.convert_to_tensor(images_), fn_output_signature=tf.float32)


def dataset_options() -> tf.data.Options:
    """How a strategy shards an input pipeline that it distributes across workers.

    ``DATA``, deliberately: every worker builds the same pipeline (the same examples in
    the same order, the same seeded shuffle), and each global batch is then divided
    among the workers. So a step sees exactly the global batch that a one-process run
    sees, and the results agree; a resumed worker replays the same batches. The price is
    that every worker reads (and, where nothing is cached, decodes) every example, so
    this is for splits held in memory and for evaluation. A training split read from at
    least as many files as workers is not distributed this way: the training loop has
    each worker build its pipeline from its own files (:class:`Shard`, through
    ``distribute_datasets_from_function``), which reads and decodes each file once per
    epoch in the whole job, at the price of another order of examples than one process.
    Without a multi-worker strategy the option does nothing.
    """
    options = tf.data.Options()
    options.experimental_distribute.auto_shard_policy = \
        tf.data.experimental.AutoShardPolicy.DATA
    return options


def decoding_failure(source: Source, splits: list[str], message: str) -> str | None:
    """What a failed step's ``message`` means, where it is TensorFlow refusing an image
    file's data (else None): the files of ``splits`` that do not decode, each decoded
    again on its own (this reads them all, so only after such a failure), and the fix."""
    if not any(sign in message for sign in ("Invalid PNG data", "Invalid JPEG data",
                                            "Invalid GIF data", "DecodeImage",
                                            "DecodeAndCropJpeg", "decode_image")):
        return None
    sys.stderr.write("an image failed to decode; looking for it...\n")
    bad = _undecodable_files(source, splits)
    which = f"image file(s) that do not decode: {listed(bad)}" if bad \
        else "an image of the dataset does not decode"
    return (f"{which} ({message}). Remove or replace the file, or set data.bad_images: "
            "skip to leave out what fails to decode")


def _undecodable_files(source: Source, splits: list[str]) -> list[str]:
    if source.folder is None:
        return []
    bad = []
    for f in {f.path: f for split in splits for f in source.files(split)}.values():
        try:
            images.decode(tf.io.read_file(f.path), source.info.input_shape[-1])
        except tf.errors.InvalidArgumentError:
            bad.append(f.path)
    return sorted(bad)


def _finished(ds: tf.data.Dataset) -> tf.data.Dataset:
    return ds.prefetch(AUTOTUNE).with_options(dataset_options())


def _one_hot_depth(info: DataInfo, data: schema.DataConfig) -> int | None:
    if not data.one_hot:
        return None
    if info.num_classes is None:
        raise UserError(
            f"one_hot needs a class label, but {data.label_key!r} of dataset "
            f"{info.full_name!r} is not a ClassLabel feature"
        )
    return info.num_classes


# --- the split: read, fixed stage, cache; then per seed: order, random stage, batches --


@dataclass(frozen=True)
class Shard:
    """One input pipeline's share of a split's files: pipeline ``index`` of ``count``
    (a worker of a multi-worker job)."""

    index: int
    count: int


@dataclass
class _Split:
    """A split's fixed stage, built once per process: either in memory as two tensors
    (``items``: preprocessed images, or encoded files where a random crop comes next),
    or a folder's file paths (read anew each epoch), or a TFDS stream (maybe cached)."""

    count: int
    items: tf.Tensor | None = None  # with labels: in-memory examples or file paths
    labels: tf.Tensor | None = None
    paths: bool = False  # items are file paths: read them, then run the fixed stage
    stream: tf.data.Dataset | None = None  # else
    # Of an uncached TFDS split in several files: (seed, shard) -> the stream of the
    # shard's files (all where None), in an order drawn from the seed (stored order for
    # no seed).
    read_files: Callable[[Any, Shard | None], tf.data.Dataset] | None = None
    files: int = 0  # how many files each pass reads (0: held in memory)

    def shuffled_files(self, seed: Any) -> tf.data.Dataset:
        assert self.read_files is not None
        return self.read_files(seed, None)

    def sharded(self, shard: Shard) -> _Split:
        """The share of ``shard``'s input pipeline: every ``count``-th file from
        ``index`` (the assignment TensorFlow's FILE auto-sharding makes)."""
        if self.paths:
            items = self.items[shard.index::shard.count]
            return _Split(int(items.shape[0]), items, self.labels[shard.index::shard.count],
                          paths=True, files=int(items.shape[0]))
        assert self.read_files is not None
        read = self.read_files
        return _Split(-1, stream=read(None, shard), files=len(range(shard.index, self.files,
                                                                    shard.count)),
                      read_files=lambda seed, _: read(seed, shard))


def _batches_for_seed(
    data: schema.DataConfig, split: str, *, training: bool, batch_size: int,
    data_dir: str | None, shard: Shard | None = None,
) -> Callable[[Any], tf.data.Dataset]:
    """``seed -> batches`` of one pass over ``split`` (of ``shard``'s files only, and
    then without end: shards differ in size, and every worker must take the epoch's
    steps). The Python work (opening the source, filling the cache) happens here, once;
    the function only adds the seeded stages, so it also runs in-graph with a tensor
    seed."""
    source = open_source(data, data_dir)
    info = dataset_info(data, data_dir)  # (checks the steps against the images)
    steps = Steps(data, training=training, channels=_channels(source, data))
    depth = _one_hot_depth(info, data)
    held = _split(source, data, split, steps)
    if shard is not None:
        held = held.sharded(shard)
    random, augment = steps.random, steps.augment(fill_value(data, info.input_shape[-1]))
    skip_bad = _skipping(data, steps)
    shuffle = training and data.shuffle_buffer > 0
    # A shuffle buffer smaller than a TFDS split is honoured as such (a stream through
    # it); otherwise the whole split is permuted, as Keras shuffles arrays.
    stream = held.stream
    if stream is None and not held.paths and shuffle and data.shuffle_buffer < held.count:
        stream = tf.data.Dataset.from_tensor_slices((held.items, held.labels))

    def examples(seed: Any) -> tf.data.Dataset:
        if stream is not None:
            if not shuffle:
                return stream
            ds = held.shuffled_files(seed) if held.read_files else stream
            return ds.shuffle(data.shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        ds = _examples_of((held.items, held.labels), shuffle=shuffle, seed=seed)
        if held.paths:
            ds = skip_bad(ds.map(lambda p, y: (steps.fixed(tf.io.read_file(p)), y),
                                 num_parallel_calls=AUTOTUNE))
        return ds

    def endless(seed: Any) -> tf.data.Dataset:
        return examples(seed).repeat() if shard is not None else examples(seed)

    def batches(seed: Any) -> tf.data.Dataset:
        if stream is None and random is None and not held.paths:
            # Whole batches gathered from one tensor: no per-example work at all.
            ds = _batches_of((held.items, held.labels), batch_size, shuffle=shuffle,
                             seed=seed)
        else:
            ds = endless(seed)
            if random is not None:
                ds = skip_bad(_with_seeds(ds, seed, offset=2).map(
                    lambda xy, s: (random(xy[0], s), xy[1]), num_parallel_calls=AUTOTUNE))
            ds = ds.batch(batch_size, num_parallel_calls=AUTOTUNE)
        if augment is not None:
            ds = _with_seeds(ds, seed, offset=1).map(
                lambda xy, s: (augment(xy[0], s), xy[1]), num_parallel_calls=AUTOTUNE)
        if depth is not None:
            ds = ds.map(lambda x, y: (x, tf.one_hot(y, depth)), num_parallel_calls=AUTOTUNE)
        return ds

    return batches


def _skipping(data: schema.DataConfig, steps: Steps
              ) -> Callable[[tf.data.Dataset], tf.data.Dataset]:
    """With ``bad_images: skip``, a stage that decodes files drops the examples whose
    file fails to decode after all (a corrupt middle passes the header checks),
    logging each; else the failure stops the run, which then names the file."""
    if data.bad_images != "skip" or steps.channels is None:
        return lambda ds: ds
    return lambda ds: ds.ignore_errors(log_warning=True)


def _with_seeds(ds: tf.data.Dataset, seed: Any, offset: int) -> tf.data.Dataset:
    """Each element paired with its own stateless seed [2], from a stream seeded with
    ``seed + offset``: reproducible under parallel maps, yet new every epoch. The offset
    keeps the streams of the shuffle, the augmentation and the crops apart."""
    seeds = tf.data.Dataset.random(
        seed=None if seed is None else seed + offset, rerandomize_each_iteration=True
    ).batch(2)
    return tf.data.Dataset.zip((ds, seeds))


def _channels(source: Source, data: schema.DataConfig) -> int | None:
    """How many channels to decode encoded images to; None where the source decodes."""
    if source.folder is not None:
        return source.info.input_shape[-1]
    if _decodes_itself(source, data):
        return None
    return source.builder.info.features[data.input_key].shape[-1] or 3


def _decodes_itself(source: Source, data: schema.DataConfig) -> bool:
    """Whether TFDS decodes the images (as it does unless a crop pays for doing it here:
    a random-resized crop, or a centre crop by fraction)."""
    feature = source.builder.info.features[data.input_key]
    if not isinstance(feature, tfds.features.Image):
        return True
    crops = any(isinstance(s, schema.RandomResizedCrop) for s in data.augmentation)
    return not crops and Steps(data, training=False, channels=None).window is None


_SPLITS: dict[tuple, _Split] = {}


def _split(source: Source, data: schema.DataConfig, split: str, steps: Steps) -> _Split:
    """The split's fixed stage (memoized per process): cached in memory where
    ``data.cache`` says so, as two tensors where its examples share a shape."""
    key = (id(source), split, steps.training, steps.channels,
           data.model_dump_json(include={"preprocessing", "augmentation", "cache",
                                         "cache_budget_mb"}))
    if key not in _SPLITS:
        count = source.info.num_examples(split)
        cache = _cache_decision(source, data, split, steps, count)
        if source.folder is not None and not cache:
            _SPLITS[key] = _Split(count, *_file_tensors(source, split), paths=True,
                                  files=count)
        else:
            ds = _stored(source, data, split, steps)
            try:
                _SPLITS[key] = _held(ds, count, cache, f"{source.info.full_name} {split}")
            except tf.errors.InvalidArgumentError as exc:  # (filling the cache)
                failure = decoding_failure(source, [split], error_text(exc))
                if failure is None:
                    raise
                raise UserError(failure) from None
            if not cache and source.builder is not None:
                read, files = _file_reader(source, data, split, steps)
                _SPLITS[key].read_files, _SPLITS[key].files = read, files
    return _SPLITS[key]


def _file_reader(source: Source, data: schema.DataConfig, split: str, steps: Steps
                 ) -> tuple[Callable[[Any, Shard | None], tf.data.Dataset] | None, int]:
    """``(seed, shard) -> examples`` of a TFDS split stored in several TFRecord files
    (of the shard's files only, where given), the files read in an order drawn from
    ``seed`` (interleaved, as TFDS's ``shuffle_files``), so the shuffle buffer mixes
    examples from all over the split; and the number of files. None for one file.

    TFDS's own ``shuffle_files`` draws its order from a Python seed and from how often
    the dataset was iterated; this one depends on the epoch's seed alone, so a resumed
    epoch reads its files in the same order."""
    info = source.builder.info
    parts = info.splits[split].file_instructions
    if info.file_format != tfds.core.FileFormat.TFRECORD or len(parts) < 2:
        return None, 0
    decoders = _decoders(data, steps)

    def example(record: tf.Tensor) -> Pair:
        ex = info.features.deserialize_example(record, decoders=decoders)
        return steps.fixed(ex[data.input_key]), ex[data.label_key]

    def read(seed: Any, shard: Shard | None) -> tf.data.Dataset:
        mine = parts if shard is None else parts[shard.index::shard.count]
        names = tf.constant([p.filename for p in mine])
        skips = tf.constant([p.skip for p in mine], tf.int64)
        takes = tf.constant([p.take for p in mine], tf.int64)

        def part(i: tf.Tensor) -> tf.data.Dataset:
            return tf.data.TFRecordDataset(names[i]).skip(skips[i]).take(takes[i])

        order = _order(tf.constant(len(mine), tf.int64), seed is not None, seed)
        return order.interleave(part, cycle_length=min(16, len(mine)),
                                num_parallel_calls=AUTOTUNE, deterministic=True) \
            .map(example, num_parallel_calls=AUTOTUNE)

    return read, len(parts)


def _decoders(data: schema.DataConfig, steps: Steps) -> dict[str, Any] | None:
    """TFDS's decoders: none, or the image handed over encoded where the steps decode it."""
    return None if steps.channels is None else {data.input_key: tfds.decode.SkipDecoding()}


def _file_tensors(source: Source, split: str) -> Pair:
    """A folder split's file paths and labels, as two tensors."""
    files = source.files(split)
    return (tf.constant([f.path for f in files]),
            tf.constant([f.label for f in files], tf.int64))


def _stored(source: Source, data: schema.DataConfig, split: str,
            steps: Steps) -> tf.data.Dataset:
    """The split's examples after the fixed stage, in stored order.

    Files are read in their stored order (not shuffled): a cache's content, and so
    every later seeded shuffle, must not depend on which epoch first filled it.
    """
    if source.folder is not None:
        pairs = tf.data.Dataset.from_tensor_slices(_file_tensors(source, split))
        pairs = pairs.map(lambda p, y: (tf.io.read_file(p), y), num_parallel_calls=AUTOTUNE)
    else:
        pairs = source.builder.as_dataset(
            split=split, shuffle_files=False, decoders=_decoders(data, steps),
            # Our own cache sits after the fixed stage; TFDS's would hold raw copies.
            read_config=tfds.ReadConfig(try_autocache=False),
        ).map(lambda ex: (ex[data.input_key], ex[data.label_key]))
    return _skipping(data, steps)(
        pairs.map(lambda x, y: (steps.fixed(x), y), num_parallel_calls=AUTOTUNE))


def _held(ds: tf.data.Dataset, count: int, cache: bool, what: str) -> _Split:
    """The fixed stage as held between epochs: two tensors where it is cached and its
    examples share a shape (and fit in one tensor), else a (cached) stream."""
    if not cache:
        return _Split(count, stream=ds)
    spec = ds.element_spec[0]
    if spec.shape.is_fully_defined():
        sys.stderr.write(f"reading {what} into memory...\n")
        items, labels = next(iter(ds.batch(max(count, 1))))
        return _Split(count, items, labels)
    ds = ds.cache()
    _fill(ds, what)
    return _Split(count, stream=ds)


def _cache_decision(source: Source, data: schema.DataConfig, split: str, steps: Steps,
                    count: int) -> bool:
    """``data.cache``; for ``auto``, whether the fixed stage's output fits the budget
    (decoded images; encoded files where a random crop decodes them each epoch)."""
    if data.cache != "auto":
        return bool(data.cache)
    size = _held_bytes(source, data, split, steps, count)
    budget = data.cache_budget_mb * MB
    if size is not None and size <= budget:
        return True
    held = "of unknown size" if size is None else f"{size / MB:,.0f} MB"
    sys.stderr.write(f"not caching {source.info.full_name} {split}: {held}, over "
                     f"data.cache_budget_mb ({data.cache_budget_mb:,} MB); it is read "
                     "anew every epoch\n")
    return False


def _held_bytes(source: Source, data: schema.DataConfig, split: str, steps: Steps,
                count: int) -> int | None:
    """What the fixed stage of ``split`` takes in memory, or None where unknown."""
    if steps.crop is None:
        shape = model_input_shape(source.info, data)
        if None in shape:
            return None
        return count * math.prod(shape) * 4  # float32
    if source.folder is not None:
        return sum(f.bytes for f in source.files(split))
    splits = source.builder.info.splits
    return sum(splits[name].num_bytes * (stop - start) // max(splits[name].num_examples, 1)
               for name, start, stop in source.info.ranges(split)) or None


def _examples_of(arrays: Pair, *, shuffle: bool, seed: Any) -> tf.data.Dataset:
    """Single examples of ``arrays`` in their order, or in the order of one seeded
    permutation per pass (as :func:`_batches_of`)."""
    items, labels = arrays
    return _order(tf.shape(labels, out_type=tf.int64)[0], shuffle, seed).map(
        lambda i: (tf.gather(items, i), tf.gather(labels, i)), num_parallel_calls=AUTOTUNE)


def _order(count: tf.Tensor, shuffle: bool, seed: Any) -> tf.data.Dataset:
    """The indices 0..count-1, or a permutation of them drawn from ``seed``: the same
    permutation for the same seed, a new one on each further pass over the dataset."""
    if not shuffle:
        return tf.data.Dataset.range(count)

    def permutation(draw: tf.Tensor) -> tf.data.Dataset:
        pair = tf.stack([draw, tf.constant(0, tf.int64)])
        return tf.data.Dataset.from_tensor_slices(
            tf.random.experimental.stateless_shuffle(tf.range(count), seed=pair))

    return tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True) \
        .take(1).flat_map(permutation)


def _batches_of(arrays: Pair, batch_size: int, *, shuffle: bool, seed: Any
                ) -> tf.data.Dataset:
    """Batches of ``arrays`` in their order, or shuffled as Keras shuffles NumPy arrays:
    one permutation of the indices per pass, each batch one gather."""
    images_, labels = arrays
    order = _order(tf.shape(labels, out_type=tf.int64)[0], shuffle, seed)
    return order.batch(batch_size).map(
        lambda i: (tf.gather(images_, i), tf.gather(labels, i)), num_parallel_calls=AUTOTUNE)


def _fill(cached: tf.data.Dataset, what: str) -> None:
    """Read a cached dataset once to the end, so its cache is complete and final.

    Later pipelines share it; one that stops early (``steps_per_epoch``) or overlaps
    with another must never meet a half-written cache.
    """
    sys.stderr.write(f"reading {what} into memory...\n")
    for _ in cached.batch(4096).prefetch(AUTOTUNE):
        pass
