"""The image operations of the pipeline: decoding, crops and resizes, colour noise.

Per example (images may differ in size): :func:`decode`, and :func:`decode_window`,
which decodes a JPEG only inside the window a crop picks (``decode_and_crop_jpeg``:
less work than decoding the whole file); the windows of :func:`random_resized_window`
and :func:`center_window`; :func:`resize_shorter` and :func:`center_crop`.

Per batch (images share a size): :func:`random_flip` (:func:`random_flip_one` for one
image), :func:`random_crop`,
:func:`color_jitter` and :func:`lighting`. Every random operation is stateless, drawn
from the seed it is given, so the pipeline's epochs replay exactly.
"""

from __future__ import annotations

import math
from collections.abc import Callable

from bnn_cli._keras import tf
from bnn_cli.config import schema

Image = tf.Tensor
Window = Callable[[tf.Tensor], tf.Tensor]
"""(height, width) of an image -> its crop window [top, left, height, width] (int32)."""

_JPEG_MAGIC = b"\xff\xd8\xff"


def decode(encoded: tf.Tensor, channels: int) -> Image:
    """A whole image file (JPEG, PNG, GIF's first frame, BMP) -> uint8 [H, W, channels]."""
    image = tf.io.decode_image(encoded, channels=channels, expand_animations=False)
    return tf.ensure_shape(image, [None, None, channels])


def decode_window(encoded: tf.Tensor, channels: int, window: Window) -> Image:
    """The ``window`` of an image file: a JPEG decoded only inside it, others decoded
    whole, then cut. uint8 [h, w, channels]."""

    def jpeg() -> Image:
        box = window(tf.image.extract_jpeg_shape(encoded)[:2])
        return tf.io.decode_and_crop_jpeg(encoded, box, channels=channels)

    def other() -> Image:
        return crop(decode(encoded, channels), window)

    is_jpeg = tf.equal(tf.strings.substr(encoded, 0, len(_JPEG_MAGIC)), _JPEG_MAGIC)
    return tf.ensure_shape(tf.cond(is_jpeg, jpeg, other), [None, None, channels])


def crop(image: Image, window: Window) -> Image:
    """The ``window`` of a decoded image [H, W, C]."""
    top, left, height, width = tf.unstack(window(tf.shape(image)[:2]))
    return image[top:top + height, left:left + width]


def random_resized_window(step: schema.RandomResizedCrop, seed: tf.Tensor) -> Window:
    """Inception's window (``stateless_sample_distorted_bounding_box``): ``step.area`` of
    the image at an aspect ratio in ``step.aspect``; where 10 attempts find none, the
    centre window of :func:`center_window` (the Larq zoo's fallback)."""

    def window(shape: tf.Tensor) -> tf.Tensor:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            tf.concat([shape, [1]], 0), bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            seed=seed, min_object_covered=step.area[0], aspect_ratio_range=step.aspect,
            area_range=step.area, max_attempts=10, use_image_if_no_bounding_boxes=True)
        found = tf.concat([begin[:2], size[:2]], 0)
        failed = tf.reduce_all(tf.equal(size[:2], shape))  # TF returns the whole image
        fallback = center_window(step.height, step.width, step.eval_crop_fraction)
        return tf.cond(failed, lambda: fallback(shape), lambda: found)

    return window


def center_window(height: int, width: int, fraction: float | None) -> Window:
    """The centre window: of ``fraction`` of the shorter side at the aspect ratio of
    height x width (the zoo's evaluation crop, before its resize), or (``None``) of
    height x width pixels, as far as the image reaches."""

    def window(shape: tf.Tensor) -> tf.Tensor:
        if fraction is None:
            size = tf.minimum(shape, [height, width])
        else:
            # The largest window of the target's aspect ratio, times ``fraction``.
            scale = fraction * tf.reduce_min(tf.cast(shape, tf.float32) / [height, width])
            size = tf.maximum(tf.cast(scale * [height, width], tf.int32), 1)
        return tf.concat([(shape - size + 1) // 2, size], 0)

    return window


def resize(image: Image, height: int, width: int, method: str) -> Image:
    """``tf.image.resize`` of one image or a batch: float32."""
    return tf.image.resize(image, (height, width), method=method)


def resize_shorter(image: Image, size: int, method: str) -> Image:
    """Resize keeping the aspect ratio, the shorter side to ``size`` (the longer one
    rounded down, as torchvision's ``Resize(size)``)."""
    shape = tf.shape(image)[:2]
    new = tf.cast(tf.cast(shape, tf.float64) * size / tf.cast(tf.reduce_min(shape),
                                                                 tf.float64), tf.int32)
    new = tf.where(shape == tf.reduce_min(shape), size, new)
    return tf.image.resize(image, new, method=method)


def center_crop(image: Image, step: schema.CenterCrop) -> Image:
    """:class:`~bnn_cli.config.schema.CenterCrop` of one decoded image."""
    if step.crop_fraction is None:
        return tf.image.resize_with_crop_or_pad(image, step.height, step.width)
    window = center_window(step.height, step.width, step.crop_fraction)
    return resize(crop(image, window), step.height, step.width, step.method)


# --- per batch -----------------------------------------------------------------------


def random_flip(x: Image, mode: str, seed: tf.Tensor) -> Image:
    """Mirror each image of the batch [B, H, W, C] with probability 1/2 per direction."""
    lr_seed, ud_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    if mode in ("horizontal", "horizontal_and_vertical"):
        x = _flip_some(x, axis=2, seed=lr_seed)
    if mode in ("vertical", "horizontal_and_vertical"):
        x = _flip_some(x, axis=1, seed=ud_seed)
    return x


def _flip_some(x: Image, axis: int, seed: tf.Tensor) -> Image:
    # One gather of reversed or straight indices per image: a ``tf.where`` between the
    # batch and its mirror image broadcasts, and costs several times more.
    flip = tf.random.stateless_uniform([tf.shape(x)[0]], seed) < 0.5
    length = tf.shape(x)[axis]
    straight = tf.range(length)
    index = tf.where(flip[:, None], straight[::-1][None], straight[None])
    return tf.gather(x, index, axis=axis, batch_dims=1)


def random_flip_one(image: Image, mode: str, seed: tf.Tensor) -> Image:
    """:func:`random_flip` of one image [H, W, C] (the same draws as a batch of one)."""
    lr_seed, ud_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=2))
    for axis, direction_seed, names in ((1, lr_seed, ("horizontal", "horizontal_and_vertical")),
                                        (0, ud_seed, ("vertical", "horizontal_and_vertical"))):
        if mode in names:
            flip = tf.random.stateless_uniform([1], direction_seed)[0] < 0.5
            image = tf.cond(flip, lambda x=image, a=axis: tf.reverse(x, [a]),
                            lambda x=image: x)
    return image


def random_crop(x: Image, step: schema.RandomCrop, fill: Image, seed: tf.Tensor) -> Image:
    """Pad with ``fill`` (a per-channel value), then cut a height x width window at a
    random place in each image of the batch."""
    if step.padding:
        # Pad (x - fill) with zeros and add fill back: a per-channel constant padding.
        p = step.padding
        x = tf.pad(x - fill, [[0, 0], [p, p], [p, p], [0, 0]]) + fill
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


def random_erasing(x: Image, step: schema.RandomErasing, fill: Image,
                   seed: tf.Tensor) -> Image:
    """:class:`~bnn_cli.config.schema.RandomErasing` of a batch [B, H, W, C]: one
    rectangle per erased image set to ``fill`` (a per-channel value)."""
    batch, height, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
    seeds = tf.random.experimental.stateless_split(seed, num=5)
    pixels = tf.cast(height * width, tf.float32)
    area = tf.random.stateless_uniform([batch], seeds[0], *step.area) * pixels
    log_aspect = tf.random.stateless_uniform([batch], seeds[1], math.log(step.aspect[0]),
                                              math.log(step.aspect[1]))
    aspect = tf.exp(log_aspect)  # height / width

    def side(length: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
        return tf.clip_by_value(tf.cast(tf.round(length), tf.int32), 1, size)

    h, w = side(tf.sqrt(area * aspect), height), side(tf.sqrt(area / aspect), width)
    top = _start(h, height, seeds[2])
    left = _start(w, width, seeds[3])
    erase = tf.random.stateless_uniform([batch], seeds[4]) < step.probability

    def inside(start: tf.Tensor, size: tf.Tensor, length: tf.Tensor) -> tf.Tensor:
        index = tf.range(length)[None, :]
        return (index >= start[:, None]) & (index < (start + size)[:, None])  # [B, L]

    rect = inside(top, h, height)[:, :, None] & inside(left, w, width)[:, None, :]
    mask = (rect & erase[:, None, None])[..., None]
    return tf.where(mask, tf.cast(fill, x.dtype), x)


def _start(size: tf.Tensor, length: tf.Tensor, seed: tf.Tensor) -> tf.Tensor:
    """A uniform start in [0, length - size] for each of the batch's sizes."""
    draw = tf.random.stateless_uniform(tf.shape(size), seed)
    start = tf.cast(tf.floor(draw * tf.cast(length - size + 1, tf.float32)), tf.int32)
    return tf.minimum(start, length - size)  # (a draw that rounds up to 1)


def color_jitter(x: Image, step: schema.ColorJitter, seed: tf.Tensor) -> Image:
    """:class:`~bnn_cli.config.schema.ColorJitter` of a batch of pixels in [0, 1]."""
    seeds = tf.random.experimental.stateless_split(seed, num=3)
    batch = tf.shape(x)[0]

    def factor(amount: float, i: int, low: float) -> tf.Tensor:
        draw = tf.random.stateless_uniform([batch, 1, 1, 1], seeds[i], -amount, amount)
        return draw + low

    if step.brightness:
        x = tf.clip_by_value(x + factor(step.brightness, 0, 0.0), 0.0, 1.0)
    if step.contrast:
        mean = tf.reduce_mean(x, axis=[1, 2], keepdims=True)
        x = tf.clip_by_value((x - mean) * factor(step.contrast, 1, 1.0) + mean, 0.0, 1.0)
    if step.saturation:
        grey = tf.image.rgb_to_grayscale(x)
        x = tf.clip_by_value(grey + (x - grey) * factor(step.saturation, 2, 1.0), 0.0, 1.0)
    return x


def lighting(x: Image, step: schema.Lighting, seed: tf.Tensor) -> Image:
    """:class:`~bnn_cli.config.schema.Lighting` of a batch of RGB pixels in [0, 1]."""
    alpha = tf.random.stateless_normal([tf.shape(x)[0], 3], seed, stddev=step.alphastd)
    eigvec = tf.constant(step.eigvec, tf.float32)
    shift = tf.linalg.matmul(alpha * tf.constant(step.eigval, tf.float32), eigvec,
                             transpose_b=True)  # [B, 3]: eigvec @ (alpha * eigval)
    return x + shift[:, None, None, :]
