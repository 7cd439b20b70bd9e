"""The ``imagenet-pipeline`` section of scripts/benchmark.py: bnn's ImageNet input
pipeline against the Larq zoo's tf.data pipeline and against JPEG decoding alone.

ImageNet is stood in for by a folder of real photographs at its typical size: random
crops of 480-500 x 360-375 pixels (width x height; a fifth of them portrait, from the
photograph turned on its side) of the two photographs scikit-learn ships, mirrored at
random, saved as JPEG quality 90 by class (``<root>/{train,validation}/<class>/<n>.jpg``,
10 classes). It is written once, with a seeded generator, and reused.

Three pipelines read it, each as images per second over one full pass (training: the
train split; evaluation: the validation split), medians over interleaved rounds:

- bnn: ``pipeline.load_split`` of a data section with ``random_resized_crop`` 224 and
  ``random_flip`` after rescale and normalize (evaluation: the centre 0.875 crop);
- zoo tf.data: the same steps as the Larq zoo's training code (larq_zoo/training/data.py,
  TensorFlow's ResNet/Inception preprocessing) writes them, in plain tf.data;
- decoding alone: read and decode every file, nothing else: the ceiling.
"""

from __future__ import annotations

import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CLASSES = 10
IMAGES = 3000  # training images
VALIDATION_IMAGES = 500  # (at most)
BATCH = 256
WARMUP_BATCHES = 3
SIZE = 224
CROP_PADDING = 32  # the zoo's evaluation crop: 224 / (224 + 32) = 0.875 of the shorter side
MEAN = (0.485, 0.456, 0.406)  # ImageNet's, of pixels in [0, 1]
STD = (0.229, 0.224, 0.225)
WIDTHS, HEIGHTS = (480, 500), (360, 375)  # landscape; portrait images swap them
PORTRAIT_SHARE = 0.2
JPEG_QUALITY = 90
MODES = ("train", "eval")
SPLITS = {"train": "train", "eval": "validation"}
PIPELINES = ("bnn", "zoo tf.data", "decoding alone", "decode, crop, resize alone")
BNN, ZOO, DECODE, FLOOR = PIPELINES


def _stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------
# The photo folder
# ---------------------------------------------------------------------------------------


def photo_folder(images: int = IMAGES, validation: int | None = None,
                 root: Path | None = None, seed: int = 0,
                 progress: Callable[[str], None] = _stderr) -> Path:
    """The folder of ``images`` training and ``validation`` (default: up to 500)
    validation photographs, under ``root`` (default: the temporary directory's
    ``bnn_imagenet_pipeline_<images>``). A complete folder (its ``done.json`` says so)
    is reused; else it is written into a temporary folder beside it and renamed into
    place, so a killed run leaves no folder that looks complete."""
    validation = min(VALIDATION_IMAGES, images) if validation is None else validation
    if min(images, validation) < CLASSES:
        raise ValueError(f"each split needs at least {CLASSES} images (one per class)")
    root = root or Path(tempfile.gettempdir()) / f"bnn_imagenet_pipeline_{images}"
    counts = {"train": images, "validation": validation, "seed": seed}
    marker = root / "done.json"
    if marker.exists() and json.loads(marker.read_text()) == counts:
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=root.name + ".", dir=root.parent))
    try:
        _write_photos(staging, counts, seed, progress)
        (staging / "done.json").write_text(json.dumps(counts))
        shutil.rmtree(root, ignore_errors=True)
        staging.rename(root)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root


def _write_photos(folder: Path, counts: dict[str, int], seed: int,
                  progress: Callable[[str], None]) -> None:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images  # china.jpg and flower.jpg, 427 x 640
    rng = np.random.default_rng(seed)
    for split in ("train", "validation"):
        for c in range(CLASSES):
            (folder / split / f"class{c}").mkdir(parents=True)
        for i in range(counts[split]):
            crop = _random_crop(photos[rng.integers(len(photos))], rng)
            Image.fromarray(crop).save(folder / split / f"class{i % CLASSES}" / f"{i:05d}.jpg",
                                       quality=JPEG_QUALITY)
            if (i + 1) % 1000 == 0:
                progress(f"imagenet-pipeline: wrote {i + 1:,} {split} photographs")


def _random_crop(photo: Any, rng: Any) -> Any:
    """A random window of ImageNet's typical size, maybe portrait, maybe mirrored."""
    import numpy as np

    width, height = (int(rng.integers(lo, hi + 1)) for lo, hi in (WIDTHS, HEIGHTS))
    if rng.random() < PORTRAIT_SHARE:  # (the photographs are too short for a portrait)
        photo, width, height = photo.transpose(1, 0, 2), height, width
    top = rng.integers(photo.shape[0] - height + 1)
    left = rng.integers(photo.shape[1] - width + 1)
    crop = photo[top:top + height, left:left + width]
    return np.ascontiguousarray(crop[:, ::-1] if rng.random() < 0.5 else crop)


def split_files(root: Path, split: str) -> tuple[list[str], list[int]]:
    """The paths of a split's files and their class indices (sorted class names)."""
    classes = sorted(p.name for p in (root / split).iterdir() if p.is_dir())
    files = [(str(f), label) for label, c in enumerate(classes)
             for f in sorted((root / split / c).glob("*.jpg"))]
    return [f for f, _ in files], [label for _, label in files]


# ---------------------------------------------------------------------------------------
# (a) bnn's pipeline
# ---------------------------------------------------------------------------------------


def bnn_data(root: Path) -> Any:
    """The data section of an ImageNet config, reading the photo folder."""
    from bnn_cli.config.schema import DataConfig

    return DataConfig.model_validate({
        "dataset": str(root),
        "train_split": "train", "validation_split": "validation", "test_split": "validation",
        "preprocessing": [{"type": "rescale", "max_value": 255, "range": [0, 1]},
                          {"type": "normalize", "mean": list(MEAN), "std": list(STD)}],
        "augmentation": [{"type": "random_resized_crop", "height": SIZE, "width": SIZE},
                         {"type": "random_flip"}],
        "cache": False,
    })


def bnn_pipeline(root: Path, mode: str, batch: int) -> Any:
    from bnn_cli.data import pipeline

    return pipeline.load_split(bnn_data(root), SPLITS[mode], training=mode == "train",
                               batch_size=batch, seed=0, data_dir=None)


# ---------------------------------------------------------------------------------------
# (b) the Larq zoo's tf.data pipeline
# ---------------------------------------------------------------------------------------


def zoo_pipeline(root: Path, mode: str, batch: int) -> Any:
    """Files -> [shuffle] -> per image: decode-and-crop, resize, [flip], normalize ->
    batch -> prefetch, as larq_zoo/training/data.py preprocesses ImageNet."""
    from bnn_cli._keras import tf

    paths, labels = split_files(root, SPLITS[mode])
    ds = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int64)))
    if mode == "train":
        ds = ds.shuffle(len(paths), reshuffle_each_iteration=True)
    image = _zoo_train_image if mode == "train" else _zoo_eval_image
    ds = ds.map(lambda p, y: (image(tf.io.read_file(p)), y),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def _zoo_train_image(encoded: Any) -> Any:
    """Inception's random crop (the zoo's ``_decode_and_random_crop``): where 10
    attempts find no window, TF returns the whole image, and the centre crop is used."""
    from bnn_cli._keras import tf

    shape = tf.image.extract_jpeg_shape(encoded)
    begin, size, _ = tf.image.sample_distorted_bounding_box(
        shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]), min_object_covered=0.1,
        aspect_ratio_range=(3 / 4, 4 / 3), area_range=(0.08, 1.0), max_attempts=10,
        use_image_if_no_bounding_boxes=True)
    window = tf.stack([begin[0], begin[1], size[0], size[1]])
    image = tf.io.decode_and_crop_jpeg(encoded, window, channels=3)
    failed = tf.reduce_all(tf.equal(size[:2], shape[:2]))
    image = tf.cond(failed, lambda: _zoo_eval_crop(encoded, shape),
                    lambda: _zoo_resize(image))
    return _zoo_normalize(tf.image.random_flip_left_right(image))


def _zoo_eval_image(encoded: Any) -> Any:
    from bnn_cli._keras import tf

    return _zoo_normalize(_zoo_eval_crop(encoded, tf.image.extract_jpeg_shape(encoded)))


def _zoo_eval_crop(encoded: Any, shape: Any) -> Any:
    """The centre square of 224 / (224 + 32) of the shorter side, decoded alone."""
    from bnn_cli._keras import tf

    side = tf.cast(SIZE / (SIZE + CROP_PADDING)
                   * tf.cast(tf.minimum(shape[0], shape[1]), tf.float32), tf.int32)
    window = tf.stack([(shape[0] - side + 1) // 2, (shape[1] - side + 1) // 2, side, side])
    return _zoo_resize(tf.io.decode_and_crop_jpeg(encoded, window, channels=3))


def _zoo_resize(image: Any) -> Any:
    # (The zoo calls tf.compat.v1's resize_bicubic: the same kernel, other pixel centres.)
    from bnn_cli._keras import tf

    return tf.image.resize(image, (SIZE, SIZE), method="bicubic")


def _zoo_normalize(image: Any) -> Any:
    from bnn_cli._keras import tf

    image = tf.reshape(image, [SIZE, SIZE, 3])
    return (image - [255 * m for m in MEAN]) / [255 * s for s in STD]


# ---------------------------------------------------------------------------------------
# (c) decoding alone
# ---------------------------------------------------------------------------------------


def decode_pipeline(root: Path, mode: str, batch: int) -> Any:
    """Read and decode each file whole; each image becomes its size, so that batches
    form and the drain costs what the others' does."""
    from bnn_cli._keras import tf

    paths, labels = split_files(root, SPLITS[mode])
    ds = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int64)))
    ds = ds.map(lambda p, y: (tf.size(tf.io.decode_jpeg(tf.io.read_file(p), channels=3)), y),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


def floor_pipeline(root: Path, mode: str, batch: int) -> Any:
    """The least work the recipe's crops need: each file decoded inside its window (the
    zoo's random window in training, its centre crop at evaluation) and resized to 224
    with the bicubic kernel; no flip, no normalization."""
    from bnn_cli._keras import tf

    def image(encoded: Any) -> Any:
        shape = tf.image.extract_jpeg_shape(encoded)
        if mode != "train":
            return _zoo_eval_crop(encoded, shape)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            shape, bounding_boxes=tf.constant([[[0.0, 0.0, 1.0, 1.0]]]),
            min_object_covered=0.1, aspect_ratio_range=(3 / 4, 4 / 3),
            area_range=(0.08, 1.0), max_attempts=10, use_image_if_no_bounding_boxes=True)
        window = tf.stack([begin[0], begin[1], size[0], size[1]])
        return _zoo_resize(tf.io.decode_and_crop_jpeg(encoded, window, channels=3))

    paths, labels = split_files(root, SPLITS[mode])
    ds = tf.data.Dataset.from_tensor_slices((paths, tf.constant(labels, tf.int64)))
    ds = ds.map(lambda p, y: (image(tf.io.read_file(p)), y),
                num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch).prefetch(tf.data.AUTOTUNE)


BUILDERS: dict[str, Callable[[Path, str, int], Any]] = {
    BNN: bnn_pipeline, ZOO: zoo_pipeline, DECODE: decode_pipeline, FLOOR: floor_pipeline}


# ---------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------


def drain(ds: Any) -> int:
    """Read a pipeline of (inputs, labels) batches to the end; how many examples."""
    return sum(int(y.shape[0]) for _, y in ds)


def _rate(ds: Any, expected: int) -> tuple[float, float]:
    """Images per second of wall time, and milliseconds of process CPU time (every
    thread's) per image: the host throttles its CPU in periods of about 10 s, which
    stretches wall time but not the CPU time the work takes."""
    start, cpu = time.perf_counter(), time.process_time()
    count = drain(ds)
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu
    if count != expected:
        raise RuntimeError(f"a pass gave {count} images, not {expected}")
    return count / elapsed, 1000 * cpu / count


def bench(rounds: int, images: int = IMAGES, batch: int = BATCH, root: Path | None = None,
          progress: Callable[[str], None] = _stderr) -> dict[str, Any]:
    """Images per second of each pipeline over one full pass of its split (medians of
    ``rounds``, the pipelines interleaved, their order reversed every other round)."""
    root = photo_folder(images, root=root, progress=progress)
    counts = {mode: len(split_files(root, SPLITS[mode])[0]) for mode in MODES}
    pipes = {(name, mode): BUILDERS[name](root, mode, batch)
             for mode in MODES for name in PIPELINES}
    for ds in pipes.values():  # (traces, opens the files' pages)
        for _ in ds.take(WARMUP_BATCHES):
            pass
    rates: dict[tuple[str, str], list[float]] = {key: [] for key in pipes}
    cpu_ms: dict[tuple[str, str], list[float]] = {key: [] for key in pipes}
    keys = list(pipes)
    for r in range(rounds):
        for key in keys if r % 2 == 0 else keys[::-1]:
            rate, cpu = _rate(pipes[key], counts[key[1]])
            rates[key].append(rate)
            cpu_ms[key].append(cpu)
        progress(f"imagenet-pipeline round {r + 1}/{rounds}: " + "  ".join(
            f"{name} {mode} {rates[name, mode][-1]:.0f}/s {cpu_ms[name, mode][-1]:.2f} ms"
            for name, mode in keys))

    def medians(values: dict[tuple[str, str], list[float]]) -> dict[str, dict[str, float]]:
        return {name: {mode: statistics.median(values[name, mode]) for mode in MODES}
                for name in PIPELINES}

    return {"folder": str(root), "images": counts, "batch": batch, "rounds": rounds,
            "images_per_s": medians(rates), "cpu_ms_per_image": medians(cpu_ms)}


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------


def table_lines(result: dict[str, Any]) -> list[str]:
    """The section's table, its goal, and the machine it ran on (markdown lines)."""
    rate, n = result["images_per_s"], result["images"]
    out = [f"ImageNet-style input pipelines (224 x 224, batch {result['batch']}) on "
           f"{n['train']:,} training and {n['eval']:,} validation photographs of about "
           f"500 x 375 (JPEG), images per second over one pass (median of "
           f"{result['rounds']}):", "",
           f"| pipeline | train img/s | eval img/s | vs {ZOO} (train / eval) "
           f"| vs {DECODE} (train / eval) | CPU ms / image (train / eval) "
           f"| CPU time vs {ZOO} (train / eval) |", "|---|---|---|---|---|---|---|"]
    cpu = result.get("cpu_ms_per_image")
    for name in [name for name in PIPELINES if name in rate]:
        r = rate[name]
        line = (f"| {name} | {r['train']:.0f} | {r['eval']:.0f} | "
                f"{_ratios(r, rate[ZOO])} | {_ratios(r, rate[DECODE])} |")
        if cpu:  # (inverted: less CPU time is faster)
            speed = {mode: 1 / cpu[name][mode] for mode in MODES}
            zoo = {mode: 1 / cpu[ZOO][mode] for mode in MODES}
            line += (f" {cpu[name]['train']:.2f} / {cpu[name]['eval']:.2f} | "
                     f"{_ratios(speed, zoo)} |")
        out.append(line)
    out += ["", _goal(rate)]
    if "cpu" in result:
        out.append(f"CPU: {cpu_line(result['cpu'])}.")
    return out + [""]


def _ratios(rate: dict[str, float], reference: dict[str, float]) -> str:
    return " / ".join(f"{rate[mode] / reference[mode]:.2f}x" for mode in MODES)


def _goal(rate: dict[str, float]) -> str:
    """Whether bnn is at least as fast as the zoo's pipeline and at least 0.8x
    decoding alone, for training and for evaluation."""
    verdicts = []
    for mode in MODES:
        met = rate[BNN][mode] >= rate[ZOO][mode] and \
            rate[BNN][mode] >= 0.8 * rate[DECODE][mode]
        verdicts.append(f"{mode} {'met' if met else 'not met'}")
    return (f"Goal: {BNN} >= {ZOO} and >= 0.8x {DECODE} (the ceiling, measured in the "
            f"same run): {', '.join(verdicts)}.")


def cpu_line(cpu: dict[str, Any]) -> str:
    """A CPU as JSON (benchmark.cpu_info) in words: model, cores and instruction sets."""
    from bnn_cli.assemble.machine import Cpu

    return str(Cpu(cpu["model"], cpu["cores"], tuple(cpu["instruction_sets"])))
