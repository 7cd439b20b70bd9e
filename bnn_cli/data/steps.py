"""The data section's steps as the pipeline runs them: which step runs per example or
per batch, in which stage (:mod:`bnn_cli.data.pipeline`), and what the steps make of an
image's shape, checked against the dataset before anything runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bnn_cli._keras import tf
from bnn_cli.config import schema
from bnn_cli.data import images
from bnn_cli.data.sources import DataInfo, DataKeyError

Image = tf.Tensor


class Steps:
    """The data section's steps as the two per-example functions of the pipeline.

    ``fixed(raw) -> image`` (stage 1) and, where training starts with a random-resized
    crop, ``random(raw, seed) -> image`` (stage 2; else ``None``), plus the batched
    augmentation ``augment(batch, seed)``. ``raw`` is an encoded image file where
    ``channels`` is given (decoded here, only inside the crop window where the first
    geometric step crops), else an already decoded image.
    """

    def __init__(self, data: schema.DataConfig, *, training: bool, channels: int | None):
        self.data, self.training, self.channels = data, training, channels
        steps = list(data.augmentation) if training else []
        crop = steps[0] if steps and isinstance(steps[0], schema.RandomResizedCrop) else None
        self.crop = crop
        # A random flip right after the crop flips each crop before it is resized: the
        # same distribution, and less process CPU time than flipping the float batch.
        follows = steps[1] if crop and len(steps) > 1 else None
        self.crop_flip = follows if isinstance(follows, schema.RandomFlip) else None
        self.batched = steps[1 + bool(self.crop_flip):] if crop else steps
        self.geometry: list[Any] = list(data.preprocessing)
        if not training:  # each random crop's deterministic counterpart
            self.geometry = [*(_counterpart(s) for s in data.augmentation
                               if isinstance(s, schema.RandomResizedCrop)),
                             *self.geometry,
                             *(_counterpart(s) for s in data.augmentation
                               if isinstance(s, schema.RandomCrop))]

    @property
    def random(self) -> Callable[[Any, tf.Tensor], Image] | None:
        """Stage 2: the crop, decoded inside its window, flipped (where a flip follows
        it), resized, and preprocessed as one affine map per channel (all the
        preprocessing is per pixel here). Per image: measured in process CPU time, it
        costs less than the same work on whole batches, whose floats leave the cache."""
        if self.crop is None:
            return None
        crop, flip = self.crop, self.crop_flip
        pointwise = affine(self.geometry) if self.geometry else None

        def random(raw: Any, seed: tf.Tensor) -> Image:
            crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
            window = images.random_resized_window(crop, crop_seed)
            image = images.decode_window(raw, self.channels, window) \
                if self.channels is not None else images.crop(raw, window)
            if flip is not None:
                image = images.random_flip_one(image, flip.mode, flip_seed)
            x = images.resize(image, crop.height, crop.width, crop.method)
            return x if pointwise is None else pointwise(x)

        return random

    @property
    def window(self) -> schema.CenterCrop | None:
        """The first geometric step where it is a centre crop by fraction: then an
        encoded JPEG is decoded only inside its window."""
        first = self.geometry[0] if self.geometry else None
        crops = isinstance(first, schema.CenterCrop) and first.crop_fraction
        return first if crops else None

    def fixed(self, raw: Any) -> Any:
        """Stage 1: decoded and preprocessed; with a random crop to come, raw as read.
        After a crop that decodes only its window (and resizes), per-pixel steps run as
        one affine map: a few passes over every pixel cost as much as the crop."""
        if self.crop is not None:
            return raw
        steps, first = list(self.geometry), self.window  # (autograph: no walrus)
        if self.channels is None:
            image = raw
        elif first is not None:
            steps.pop(0)  # decode only its window
            window = images.center_window(first.height, first.width, first.crop_fraction)
            image = images.decode_window(raw, self.channels, window)
            image = images.resize(image, first.height, first.width, first.method)
            if steps and all(isinstance(s, schema.Rescale | schema.Normalize) for s in steps):
                return affine(steps)(image)
        else:
            image = images.decode(raw, self.channels)
        x = tf.cast(image, tf.float32)
        for step in steps:
            x = _step_fn(step)(x)
        return x

    def augment(self, fill: Image) -> Callable[[Image, tf.Tensor], Image] | None:
        """The batched augmentation steps as one function of (batch, seed [2])."""
        if not self.batched:
            return None
        to_unit, from_unit = _unit_scale(self.data)
        steps = [_augment_fn(s, fill, to_unit, from_unit) for s in self.batched]

        def augment(x: Image, seed: tf.Tensor) -> Image:
            step_seeds = tf.random.experimental.stateless_split(seed, num=len(steps))
            for i, step in enumerate(steps):
                x = step(x, step_seeds[i])
            return x

        return augment


def _counterpart(step: schema.RandomResizedCrop | schema.RandomCrop) -> Any:
    if isinstance(step, schema.RandomResizedCrop):
        return schema.CenterCrop(height=step.height, width=step.width,
                                 crop_fraction=step.eval_crop_fraction, method=step.method)
    return schema.CenterCrop(height=step.height, width=step.width)


def _step_fn(step: Any) -> Callable[[Image], Image]:
    """One deterministic step as a function on a float32 image."""
    if isinstance(step, schema.Rescale):
        low, high = step.range
        # Divide first: max_value / max_value is exactly 1.0, so the ends of the range
        # come out exact (e.g. exactly -1 and 1); a fused scale factor can miss by an ulp.
        return lambda x: x / step.max_value * (high - low) + low
    if isinstance(step, schema.Resize):
        return lambda x: images.resize(x, step.height, step.width, step.method)
    if isinstance(step, schema.ResizeShorter):
        return lambda x: images.resize_shorter(x, step.size, step.method)
    if isinstance(step, schema.CenterCrop):
        return lambda x: images.center_crop(x, step)
    mean = tf.constant(step.mean, tf.float32)
    std = tf.constant(step.std, tf.float32)
    return lambda x: (x - mean) / std


def affine(steps: list[Any]) -> Callable[[Image], Image]:
    """Per-pixel steps (rescale, normalize) folded into one ``x * scale + offset`` per
    channel, the constants worked out in float64."""
    scale, offset = np.float64(1.0), np.float64(0.0)
    for step in steps:
        if isinstance(step, schema.Rescale):
            low, high = step.range
            scale, offset = scale * (high - low) / step.max_value, \
                offset * (high - low) / step.max_value + low
        else:
            mean, std = np.array(step.mean), np.array(step.std)
            scale, offset = scale / std, (offset - mean) / std
    scale_t = tf.constant(np.float32(scale))
    offset_t = tf.constant(np.float32(offset))
    return lambda x: tf.cast(x, tf.float32) * scale_t + offset_t


def _pointwise(data: schema.DataConfig) -> Callable[[Image], Image]:
    """The preprocessing's per-pixel steps (rescale, normalize) alone."""
    steps = [_step_fn(s) for s in data.preprocessing
             if isinstance(s, schema.Rescale | schema.Normalize)]

    def apply(x: Image) -> Image:
        for step in steps:
            x = step(x)
        return x

    return apply


def _unit_scale(data: schema.DataConfig) -> tuple[Callable[[Image], Image],
                                                   Callable[[Image], Image]]:
    """Maps between preprocessed pixels and [0, 1] (0: black, 1: white), per channel:
    colour augmentations are defined on [0, 1] whatever the preprocessing. The
    preprocessing's per-pixel steps are affine, so two pixels pin the map down."""
    pointwise = _pointwise(data)
    white = float(next((s.max_value for s in data.preprocessing
                        if isinstance(s, schema.Rescale)), 255.0))
    black_px = pointwise(tf.zeros([1, 1, 1], tf.float32))
    span = pointwise(tf.fill([1, 1, 1], white)) - black_px
    return (lambda x: (x - black_px) / span), (lambda u: u * span + black_px)


def fill_value(data: schema.DataConfig, channels: Any) -> Image:
    """What a black (0) pixel becomes after preprocessing: the value crops pad with.

    Padding the preprocessed image with this matches the usual recipe of padding the raw
    image with black (e.g. -1 after a [-1, 1] rescale, not the 0 of mid-grey).
    """
    return _pointwise(data)(tf.zeros([1, 1, channels], tf.float32))


def _augment_fn(step: Any, fill: Image, to_unit: Callable, from_unit: Callable
                ) -> Callable[[Image, tf.Tensor], Image]:
    if isinstance(step, schema.RandomFlip):
        return lambda x, seed: images.random_flip(x, step.mode, seed)
    if isinstance(step, schema.RandomCrop):
        return lambda x, seed: images.random_crop(x, step, fill, seed)
    if isinstance(step, schema.RandomErasing):
        return lambda x, seed: images.random_erasing(x, step, fill, seed)
    colour = images.color_jitter if isinstance(step, schema.ColorJitter) else images.lighting
    return lambda x, seed: from_unit(colour(to_unit(x), step, seed))


def model_input_shape(info: DataInfo, data: schema.DataConfig) -> tuple[int | None, ...]:
    """The shape of one preprocessed example, with the steps checked against the
    images: crops fit, sizes fixed before batching, colour steps on RGB."""
    shape = tuple(info.input_shape)
    steps = [(("preprocessing", i), s) for i, s in enumerate(data.preprocessing)] + \
            [(("augmentation", i), s) for i, s in enumerate(data.augmentation)]
    _check_order(data)
    for path, step in steps:
        if isinstance(step, schema.Normalize | schema.Rescale | schema.RandomFlip):
            continue
        if len(shape) != 3:
            raise DataKeyError(f"{step.type} needs images of shape (height, width, "
                               f"channels), but {data.input_key!r} has shape {shape}", path)
        if isinstance(step, schema.ColorJitter | schema.Lighting) and shape[2] != 3 and \
                (isinstance(step, schema.Lighting) or step.saturation):
            raise DataKeyError(f"{step.type} needs RGB images, but {data.input_key!r} has "
                               f"{shape[2]} channel(s)", path)
        if isinstance(step, schema.RandomCrop):
            _check_crop_fits(step, shape, data.input_key, path)
        if isinstance(step, schema.ResizeShorter):
            square = shape[0] is not None and shape[0] == shape[1]
            shape = (step.size, step.size, shape[2]) if square else (None, None, shape[2])
        elif not isinstance(step, schema.PIXEL_STEPS):
            shape = (step.height, step.width, shape[2])
    if info.kind == "image_folder" and None in shape[:2]:
        sizes = ", ".join(f"{h}x{w}" for h, w in info.image_sizes)
        raise DataKeyError(f"the images of {info.full_name} differ in size ({sizes}, ...) "
                           "and no step makes them one size: add a resize, center_crop or "
                           "random_resized_crop step", ("preprocessing",))
    return shape


def _check_order(data: schema.DataConfig) -> None:
    """A random-resized crop crops the decoded image: it comes first, with no other
    step that sets the size before it."""
    for i, step in enumerate(data.augmentation):
        if isinstance(step, schema.RandomResizedCrop) and i > 0:
            raise DataKeyError("random_resized_crop must be the first augmentation step: "
                               "it crops each decoded image before batching", ("augmentation", i))
    if data.augmentation and isinstance(data.augmentation[0], schema.RandomResizedCrop):
        for i, step in enumerate(data.preprocessing):
            if isinstance(step, schema.GEOMETRY_STEPS):
                raise DataKeyError(
                    f"{step.type} in preprocessing would run before random_resized_crop in "
                    "training; the crop sets the size itself (and evaluation uses its "
                    "eval_crop_fraction): remove this step", ("preprocessing", i))


def _check_crop_fits(step: schema.RandomCrop, shape: tuple[int | None, ...], key: str,
                     path: tuple) -> None:
    """A random crop must fit inside the (padded) image; TF would fail mid-epoch."""
    pad = 2 * step.padding
    pairs = ((step.height, shape[0]), (step.width, shape[1]))
    if any(dim is not None and size > dim + pad for size, dim in pairs):
        raise DataKeyError(
            f"random_crop of {step.height}x{step.width} does not fit the {key!r} images "
            f"of {shape[0]}x{shape[1]} padded by {step.padding}; make the crop smaller "
            "or the padding larger", path)


