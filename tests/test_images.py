"""Images from files: the crops and colour steps of the published recipes, decode-and-crop,
caching that follows the data, exact epochs, and a folder of images against TFDS.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest

from bnn_cli._keras import tf

# isort: split
import tensorflow_datasets as tfds
from PIL import Image

from bnn_cli.config.schema import (
    CenterCrop,
    ColorJitter,
    DataConfig,
    Lighting,
    RandomErasing,
    RandomResizedCrop,
    TrainingConfig,
)
from bnn_cli.data import images
from bnn_cli.data import pipeline as data
from bnn_cli.errors import UserError

SHARED_TFDS = Path(__file__).resolve().parents[2] / "shared" / "tfds"
UNIT = [{"type": "rescale", "max_value": 255, "range": [0, 1]}]


def _photo(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth RGB image (JPEG keeps it close), uint8."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([np.sin(x / 9.0 + c) + np.cos(y / 7.0 - c) for c in range(3)], -1)
    return np.clip(128 + 60 * base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def _jpeg(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="JPEG", quality=92)
    return out.getvalue()


def _write_folder(root: Path, count: int, sizes: list[tuple[int, int]], classes: int = 3
                  ) -> Path:
    """``root/train/c<k>/<i>.jpg`` (every other file a PNG) and a small ``test`` split."""
    for split, n in (("train", count), ("test", count // 3)):
        for i in range(n):
            folder = root / split / f"c{i % classes}"
            folder.mkdir(parents=True, exist_ok=True)
            h, w = sizes[i % len(sizes)]
            image = Image.fromarray(_photo(h, w, seed=i + (7 if split == "test" else 0)))
            image.save(folder / (f"{i}.jpg" if i % 2 else f"{i}.png"))
    return root


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Photographs of several sizes (as ImageNet's), JPEG and PNG."""
    return _write_folder(tmp_path_factory.mktemp("photos"), 48,
                         [(60, 80), (75, 50), (64, 64), (90, 70)])


def _config(root: Path, **changes: object) -> DataConfig:
    spec = {"dataset": str(root), "train_split": "train", "validation_split": None,
            "test_split": "test", "preprocessing": UNIT,
            "augmentation": [{"type": "random_resized_crop", "height": 32, "width": 32},
                             {"type": "random_flip"}],
            **changes}
    return DataConfig.model_validate(spec)


def _batches(ds: tf.data.Dataset) -> list[tuple[np.ndarray, np.ndarray]]:
    return [(x.numpy(), y.numpy()) for x, y in ds]


# --- the operations, against their definitions -----------------------------------------


def test_decode_window_of_a_jpeg_equals_decoding_whole_then_cropping() -> None:
    encoded = tf.constant(_jpeg(_photo(75, 100)))
    window = images.center_window(32, 48, 0.5)
    whole = tf.io.decode_jpeg(encoded, channels=3).numpy()
    top, left, h, w = window(tf.constant([75, 100])).numpy()
    np.testing.assert_array_equal(images.decode_window(encoded, 3, window).numpy(),
                                  whole[top:top + h, left:left + w])
    assert (h, w) == (33, 50)  # half the largest 48:32 window (100 x 66.7)


def test_center_crop_by_fraction_is_the_zoos_evaluation_crop() -> None:
    """The Larq zoo: a centre square of int(224 / (224 + 32) * shorter side), offsets
    ((side - crop + 1) // 2), resized bicubic to 224 (here 32, its 0.875)."""
    image = _photo(90, 70)
    crop = int(0.875 * 70)
    top, left = (90 - crop + 1) // 2, (70 - crop + 1) // 2
    expected = tf.image.resize(image[top:top + crop, left:left + crop], (32, 32),
                               method="bicubic").numpy()
    step = CenterCrop(height=32, width=32, crop_fraction=0.875)
    np.testing.assert_allclose(images.center_crop(tf.constant(image), step).numpy(),
                               expected, atol=1e-4)


def test_center_crop_without_fraction_cuts_the_exact_centre() -> None:
    image = np.arange(9 * 12 * 1, dtype=np.float32).reshape(9, 12, 1)
    out = images.center_crop(tf.constant(image), CenterCrop(height=5, width=6)).numpy()
    np.testing.assert_array_equal(out, image[2:7, 3:9])


def test_resize_shorter_keeps_the_aspect_ratio_as_torchvision() -> None:
    out = images.resize_shorter(tf.zeros([375, 500, 3]), 256, "bilinear")
    assert out.shape == (256, 341, 3)  # int(256 * 500 / 375) = 341
    assert images.resize_shorter(tf.zeros([500, 375, 3]), 256, "bilinear").shape == \
        (341, 256, 3)


def test_random_resized_windows_cover_the_area_and_aspect_ranges() -> None:
    step = RandomResizedCrop(height=224, width=224, area=(0.25, 0.5), aspect=(0.75, 1.25))
    shape = tf.constant([300, 400])
    windows = np.array([images.random_resized_window(step, tf.constant([i, 0]))(shape).numpy()
                        for i in range(200)])
    top, left, h, w = windows.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= 300).all() and (left + w <= 400).all()
    area = h * w / (300 * 400)
    assert area.min() >= 0.24 and area.max() <= 0.51  # (whole pixels round a little)
    assert (w / h).min() >= 0.74 and (w / h).max() <= 1.26
    assert len({tuple(x) for x in windows}) > 150  # random, not one window
    again = images.random_resized_window(step, tf.constant([3, 0]))(shape).numpy()
    np.testing.assert_array_equal(again, windows[3])  # seeded: the same window


def test_lighting_adds_alexnets_pca_shift_per_image() -> None:
    x = tf.random.uniform([4, 5, 6, 3], seed=1)
    step = Lighting(alphastd=0.1)
    shift = (images.lighting(x, step, tf.constant([1, 2])) - x).numpy()
    per_image = shift[:, :1, :1, :]
    np.testing.assert_allclose(shift, np.broadcast_to(per_image, shift.shape), atol=1e-6)
    # Each shift is eigvec @ (alpha * eigval): solve for alpha and check its scale.
    eigvec, eigval = np.array(step.eigvec), np.array(step.eigval)
    alpha = np.linalg.solve(eigvec, per_image.reshape(4, 3).T).T / eigval
    assert 0 < np.abs(alpha).max() < 0.5
    np.testing.assert_array_equal(images.lighting(x, Lighting(alphastd=0.0),
                                                  tf.constant([1, 2])), x)


def test_random_erasing_sets_one_rectangle_of_the_drawn_size_to_fill() -> None:
    """Each erased image has exactly one rectangle of the fill value, of an area and
    aspect in the step's ranges (whole pixels round them); the others are untouched."""
    x = tf.random.uniform([400, 28, 28, 1], 0.1, 1.0, seed=3)  # (no pixel equals fill)
    fill = tf.constant([[[-1.0]]])
    step = RandomErasing(probability=0.5, area=[0.05, 0.2], aspect=[0.5, 2.0])
    out = images.random_erasing(x, step, fill, tf.constant([7, 8])).numpy()
    erased = out[..., 0] == -1.0
    np.testing.assert_array_equal(out[~erased], x.numpy()[~erased])
    hit = erased.any(axis=(1, 2))
    assert 150 < hit.sum() < 250  # about half
    for mask in erased[hit]:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        h, w = len(rows), len(cols)
        assert mask.sum() == h * w and np.ptp(rows) == h - 1 and np.ptp(cols) == w - 1
        assert 0.04 <= h * w / 784 <= 0.22
        assert 0.5 / 1.5 <= h / w <= 2.0 * 1.5
    again = images.random_erasing(x, step, fill, tf.constant([7, 8])).numpy()
    np.testing.assert_array_equal(again, out)  # seeded
    never = RandomErasing(probability=0.0)
    np.testing.assert_array_equal(images.random_erasing(x, never, fill, tf.constant([1, 2])), x)


def test_random_erasing_in_a_config_erases_training_batches_with_black(photos: Path) -> None:
    """Through the pipeline: training batches get black rectangles (after a [-1, 1]
    rescale, -1 in every channel); evaluation batches are never erased."""
    pre = [{"type": "rescale", "max_value": 255, "range": [-1, 1]}, {"type": "resize",
                                                                     "height": 24, "width": 24}]
    aug = [{"type": "random_erasing", "probability": 1.0, "area": [0.2, 0.2],
            "aspect": [1.0, 1.0]}]
    cfg = _config(photos, augmentation=aug, preprocessing=pre)
    x, _ = next(iter(data.load_split(cfg, "train", training=True, batch_size=8, seed=1,
                                     data_dir=None)))
    black = (x.numpy() == -1.0).all(axis=-1)
    assert all(m.sum() == 11 * 11 for m in black)  # round(sqrt(0.2 * 576)) = 11
    x, _ = next(iter(data.load_split(cfg, "test", training=False, batch_size=8, seed=1,
                                     data_dir=None)))
    assert not (x.numpy() == -1.0).all(axis=-1).any(axis=(1, 2)).all()


def test_color_jitter_stays_in_range_and_brightness_adds_one_delta_per_image() -> None:
    x = tf.random.uniform([6, 8, 8, 3], 0.2, 0.8, seed=2)
    out = images.color_jitter(x, ColorJitter(brightness=0.1), tf.constant([5, 6])).numpy()
    delta = out - x.numpy()
    np.testing.assert_allclose(delta, np.broadcast_to(delta[:, :1, :1, :1], delta.shape),
                               atol=1e-6)
    assert np.abs(delta).max() <= 0.1 + 1e-6 and np.abs(delta).max() > 0
    full = images.color_jitter(x, ColorJitter(brightness=0.4, contrast=0.4, saturation=0.4),
                               tf.constant([5, 6])).numpy()
    assert full.min() >= 0.0 and full.max() <= 1.0


def test_colour_steps_act_on_unit_pixels_whatever_the_normalization(photos: Path) -> None:
    """Lighting after a mean/std normalization equals lighting on [0, 1] pixels, then
    the normalization: the step does not depend on how pixels are scaled."""
    norm = {"type": "normalize", "mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}
    aug = [{"type": "random_resized_crop", "height": 16, "width": 16},
           {"type": "lighting", "alphastd": 0.5}]
    plain = data.load_split(_config(photos, augmentation=aug), "train", training=True,
                            batch_size=8, seed=4, data_dir=None)
    normed = data.load_split(_config(photos, augmentation=aug, preprocessing=[*UNIT, norm]),
                             "train", training=True, batch_size=8, seed=4, data_dir=None)
    (x, _), (z, _) = next(iter(plain)), next(iter(normed))
    expected = (x.numpy() - np.array(norm["mean"])) / np.array(norm["std"])
    np.testing.assert_allclose(z.numpy(), expected, atol=1e-4)


def test_label_smoothing_of_class_indices_equals_keras_on_one_hot() -> None:
    from bnn_cli._keras import keras
    from bnn_cli.assemble.model import build_loss

    labels = np.array([0, 2, 1])
    probs = tf.nn.softmax(tf.random.normal([3, 3], seed=3))
    ours = build_loss(TrainingConfig(label_smoothing=0.1))(labels, probs)
    keras_loss = keras.losses.CategoricalCrossentropy(label_smoothing=0.1, reduction="none")
    np.testing.assert_allclose(ours, keras_loss(tf.one_hot(labels, 3), probs), rtol=1e-6)
    plain = build_loss(TrainingConfig(label_smoothing=0.0))
    assert plain == "sparse_categorical_crossentropy"


# --- the pipeline on a folder -----------------------------------------------------------


def test_training_batches_from_photos_of_mixed_sizes(photos: Path) -> None:
    cfg = _config(photos)
    info = data.dataset_info(cfg, None)
    assert info.input_shape == (32, 32, 3) and info.num_classes == 3
    assert info.split_sizes == {"test": 16, "train": 48}
    batches = _batches(data.load_split(cfg, "train", training=True, batch_size=16, seed=0,
                                       data_dir=None))
    assert [x.shape for x, _ in batches] == [(16, 32, 32, 3)] * 3
    # (bicubic resizing overshoots [0, 1] a little at edges, as in the zoo)
    assert all(x.dtype == np.float32 and x.min() >= -0.3 and x.max() <= 1.3 for x, _ in batches)
    assert 0.3 < np.mean([x.mean() for x, _ in batches]) < 0.7
    evaluation = _batches(data.load_split(cfg, "test", training=False, batch_size=16, seed=0,
                                          data_dir=None))
    assert evaluation[0][0].shape == (16, 32, 32, 3)


def test_evaluation_is_the_centre_crop_of_each_file(photos: Path) -> None:
    cfg = _config(photos)
    x, y = data.split_examples(cfg, "test", batch_size=16, data_dir=None)
    source = data.open_source(cfg, None)
    first = source.files("test")[0]
    raw = tf.io.decode_image(tf.io.read_file(first.path), channels=3)
    step = CenterCrop(height=32, width=32, crop_fraction=0.875)
    expected = images.center_crop(tf.cast(raw, tf.float32), step).numpy() / 255
    np.testing.assert_allclose(x[0], expected, atol=1e-5)
    assert y[0] == first.label


def test_images_of_different_sizes_need_a_step_that_sizes_them(photos: Path) -> None:
    cfg = _config(photos, augmentation=[{"type": "random_flip"}])
    with pytest.raises(data.DataKeyError, match="differ in size"):
        data.dataset_info(cfg, None)


def test_random_resized_crop_must_come_first_and_alone(photos: Path) -> None:
    second = [{"type": "random_flip"},
              {"type": "random_resized_crop", "height": 8, "width": 8}]
    with pytest.raises(data.DataKeyError, match="first augmentation step") as info:
        data.dataset_info(_config(photos, augmentation=second), None)
    assert info.value.path == ("augmentation", 1)
    resized = [*UNIT, {"type": "resize", "height": 40, "width": 40}]
    with pytest.raises(data.DataKeyError, match="remove this step"):
        data.dataset_info(_config(photos, preprocessing=resized), None)


@pytest.mark.parametrize("cache", [True, False])
def test_file_backed_epochs_replay_exactly_after_a_resume(photos: Path, cache: bool) -> None:
    """Epoch 2 has the same batches (files, crops, flips) whether the run started at
    epoch 0 or resumed at 2, cached or read from files."""
    cfg = _config(photos, cache=cache)
    whole = _batches(data.training_epochs(cfg, first=0, end=3, steps=3, batch_size=16,
                                          seed=5, data_dir=None))
    resumed = _batches(data.training_epochs(cfg, first=2, end=3, steps=3, batch_size=16,
                                            seed=5, data_dir=None))
    for (x, y), (x2, y2) in zip(whole[6:], resumed, strict=True):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(whole[0][0], whole[3][0])  # each epoch differs


def test_caching_does_not_change_the_batches(photos: Path,
                                             capfd: pytest.CaptureFixture[str]) -> None:
    """``cache: auto`` holds the encoded files when they fit the budget, reads them
    anew each epoch when not (and says so); the batches are the same either way."""
    fits = _batches(data.load_split(_config(photos, cache_budget_mb=100), "train",
                                    training=True, batch_size=16, seed=1, data_dir=None))
    assert "into memory" in capfd.readouterr().err
    over = _batches(data.load_split(_config(photos, cache_budget_mb=0), "train",
                                    training=True, batch_size=16, seed=1, data_dir=None))
    assert "not caching" in capfd.readouterr().err
    for (x, y), (x2, y2) in zip(fits, over, strict=True):
        np.testing.assert_array_equal(x, x2)
        np.testing.assert_array_equal(y, y2)


def test_files_are_shuffled_for_training_and_not_for_evaluation(photos: Path) -> None:
    cfg = _config(photos, augmentation=[{"type": "random_resized_crop", "height": 8,
                                         "width": 8}])
    order = [data.load_split(cfg, "train", training=True, batch_size=48, seed=s,
                             data_dir=None) for s in (0, 1)]
    labels = [next(iter(ds))[1].numpy() for ds in order]
    files = [f.label for f in data.open_source(cfg, None).files("train")]
    assert sorted(labels[0]) == sorted(files)
    assert not np.array_equal(labels[0], labels[1])
    evaluation = data.load_split(cfg, "train", training=False, batch_size=48, seed=0,
                                 data_dir=None)
    np.testing.assert_array_equal(next(iter(evaluation))[1].numpy(), files)


# --- TFDS: a dataset directory, decode-and-crop, and the same data from a folder -------


needs_mnist = pytest.mark.skipif(not (SHARED_TFDS / "mnist").is_dir(),
                                 reason="needs ../shared/tfds/mnist")


@needs_mnist
def test_a_tfds_dataset_directory_prepared_elsewhere() -> None:
    version = sorted((SHARED_TFDS / "mnist").iterdir())[-1]
    cfg = DataConfig(dataset=str(version), train_split="train[:1%]", test_split="test")
    info = data.dataset_info(cfg, None)
    assert info.kind == "tfds_directory" and info.num_classes == 10
    assert info.split_sizes == {"test": 10_000, "train": 60_000}
    x, y = data.split_examples(cfg, "test[:20]", batch_size=10, data_dir=None)
    assert x.shape == (20, 28, 28, 1) and set(y) <= set(range(10))


def _mnist_folder(root: Path, counts: dict[str, int]) -> tuple[Path, dict[str, tuple]]:
    """The first examples of MNIST's splits written as PNG files by class."""
    arrays = {}
    for split, n in counts.items():
        ds = tfds.load("mnist", split=f"{split}[:{n}]", data_dir=str(SHARED_TFDS))
        batch = next(iter(tfds.as_numpy(ds.batch(n))))
        arrays[split] = (batch["image"], batch["label"])
        for i, (image, label) in enumerate(zip(*arrays[split], strict=True)):
            folder = root / split / str(label)
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image[..., 0]).save(folder / f"{i:05d}.png")
    return root, arrays


@needs_mnist
def test_a_folder_of_mnist_pngs_holds_exactly_the_tfds_examples(tmp_path: Path) -> None:
    root, arrays = _mnist_folder(tmp_path / "mnist", {"train": 300})
    cfg = DataConfig(dataset=str(root), train_split="train", validation_split=None,
                     test_split="train")
    info = data.dataset_info(cfg, None)
    assert info.input_shape == (28, 28, 1)
    assert info.class_names == tuple(str(c) for c in range(10))  # folder names, sorted
    x, y = data.split_examples(cfg, "train", batch_size=64, data_dir=None)
    expected = data.preprocess_images(cfg, arrays["train"][0]).numpy()
    key = [hash(img.tobytes()) for img in x]
    order = {h: i for i, h in enumerate(hash(img.tobytes()) for img in expected)}
    assert sorted(key) == sorted(order)  # the same images...
    np.testing.assert_array_equal(y, arrays["train"][1][[order[k] for k in key]])  # labels


def _train_accuracy(config: Path, tmp_path: Path, name: str) -> float:
    from bnn_cli import api

    run = api.train(config, f"name={name}", output=tmp_path / "runs")
    return run.record.test["metrics"]["accuracy"]


@needs_mnist
def test_training_from_a_folder_matches_training_from_tfds(tmp_path: Path) -> None:
    """A few hundred MNIST digits, once as PNG files by class and once from TFDS: the
    same network reaches the same test accuracy (within 3 points on 300 test digits;
    the slow tier holds full MNIST to 0.3)."""
    root, _ = _mnist_folder(tmp_path / "mnist", {"train": 1200, "test": 300})
    accuracy = {}
    for name, dataset in (("folder", str(root)), ("tfds", "mnist")):
        config = tmp_path / f"{name}.yaml"
        config.write_text(_MNIST_CONFIG.format(dataset=dataset, data_dir=SHARED_TFDS,
                                               train="train[:1000]" if name == "tfds"
                                               else "train[:1000]",
                                               test="test[:300]"))
        accuracy[name] = _train_accuracy(config, tmp_path, name)
    assert accuracy["tfds"] > 0.8
    assert abs(accuracy["folder"] - accuracy["tfds"]) <= 0.03, accuracy


_MNIST_CONFIG = """
model:
  layers:
    - {{type: Flatten}}
    - {{type: Dense, units: 64, activation: relu}}
    - {{type: Dense, units: 10, activation: softmax}}
data:
  dataset: {dataset}
  data_dir: {data_dir}
  train_split: "{train}"
  validation_split: null
  test_split: "{test}"
training: {{epochs: 4, batch_size: 32, learning_rate: 0.003}}
"""


def test_a_run_on_a_relative_folder_evaluates_and_predicts_from_anywhere(
        photos: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``dataset: photos`` is relative to the config file; the run finds the folder again
    from another working directory, and predicts image files of any size."""
    from bnn_cli import api

    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "photos").symlink_to(photos)
    (configs / "c.yaml").write_text(
        "model: {layers: [{type: Flatten}, {type: Dense, units: 3, activation: softmax}]}\n"
        "data:\n  dataset: photos\n  train_split: train\n  validation_split: null\n"
        "  preprocessing: [{type: rescale, max_value: 255, range: [0, 1]}]\n"
        "  augmentation: [{type: random_resized_crop, height: 8, width: 8}]\n"
        "training: {epochs: 1, batch_size: 16}\n")
    monkeypatch.chdir(tmp_path)
    run = api.train(configs / "c.yaml", output=tmp_path / "runs")
    assert api.check(configs / "c.yaml").checked.data.full_name == str(photos.resolve())
    monkeypatch.chdir(os.sep)
    report = api.evaluate(run.path, split="test")
    assert report.as_dict()["metrics"]["accuracy"] == pytest.approx(
        run.record.test["metrics"]["accuracy"])
    files = [str(f.path) for f in data.open_source(
        _config(photos), None).files("test")[:3]]  # 90x70, 60x80, 75x50: mixed sizes
    predictions = api.predict(run.path, files).as_dict()["predictions"]
    assert [p["input"] for p in predictions] == files
    assert all(p["top"][0]["name"] in {"c0", "c1", "c2"} for p in predictions)
    with pytest.raises(UserError, match="no such folder"):
        api.check("model: {layers: [{type: Flatten}]}\ndata: {dataset: ./photos}\n")


def _sharded_tfds_directory(root: Path, files: int = 4, per_file: int = 10) -> Path:
    """A TFDS dataset directory written by hand in several TFRecord files: example k
    (an 8x8 image of value k) sits in file k // per_file."""
    features = tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(8, 8, 1)),
        "label": tfds.features.ClassLabel(num_classes=3)})
    root.mkdir(parents=True)
    for i in range(files):
        with tf.io.TFRecordWriter(str(root / f"shards-train.tfrecord-{i:05d}-of-"
                                             f"{files:05d}")) as writer:
            for j in range(per_file):
                k = i * per_file + j
                writer.write(features.serialize_example(
                    {"image": np.full((8, 8, 1), k, np.uint8), "label": k % 3}))
    tfds.folder_dataset.write_metadata(data_dir=str(root), features=features)
    return root


def test_tfds_files_are_read_in_an_order_drawn_from_the_epoch(tmp_path: Path) -> None:
    root = _sharded_tfds_directory(tmp_path / "shards" / "1.0.0")
    cfg = DataConfig(dataset=str(root), train_split="train", validation_split=None,
                     preprocessing=[], cache=False, shuffle_buffer=1)

    def first_files(seed: int) -> list[int]:
        x, _ = next(iter(data.load_split(cfg, "train", training=True, batch_size=40,
                                         seed=seed, data_dir=None)))
        values = x.numpy()[:, 0, 0, 0].astype(int)
        assert sorted(values) == list(range(40))  # every example once
        return list(values[:4] // 10)

    orders = [first_files(seed) for seed in range(4)]
    assert all(sorted(order) == [0, 1, 2, 3] for order in orders)  # interleaved files
    assert len({tuple(order) for order in orders}) > 1  # in orders drawn from the seed
    assert first_files(2) == orders[2]
    evaluation = data.load_split(cfg, "train", training=False, batch_size=40, seed=0,
                                 data_dir=None)
    stored = next(iter(evaluation))[0].numpy()[:, 0, 0, 0].astype(int)
    assert list(stored) == list(range(40))  # evaluation reads in stored order


@needs_mnist
def test_a_tfds_image_feature_is_decoded_inside_the_crop(tmp_path: Path) -> None:
    """With a random-resized crop, TFDS hands over the encoded image (SkipDecoding)
    and the crop decodes it; evaluation gets the centre crop of the same images."""
    cfg = DataConfig(dataset="mnist", train_split="train[:64]", validation_split=None,
                     test_split="test[:32]", preprocessing=UNIT,
                     augmentation=[{"type": "random_resized_crop", "height": 20,
                                    "width": 20}])
    source = data.open_source(cfg, str(SHARED_TFDS))
    assert data._channels(source, cfg) == 1  # decoded by the pipeline, not by TFDS
    x, _ = next(iter(data.load_split(cfg, "train[:64]", training=True, batch_size=64,
                                     seed=0, data_dir=str(SHARED_TFDS))))
    assert x.shape == (64, 20, 20, 1)
    test, _ = data.split_examples(cfg, "test[:32]", batch_size=32, data_dir=str(SHARED_TFDS))
    raw = next(iter(tfds.as_numpy(tfds.load("mnist", split="test[:1]",
                                            data_dir=str(SHARED_TFDS)))))["image"]
    step = CenterCrop(height=20, width=20, crop_fraction=0.875)
    expected = images.center_crop(tf.constant(raw, tf.float32), step).numpy() / 255
    np.testing.assert_allclose(test[0], expected, atol=1e-5)


@needs_mnist
@pytest.mark.slow
def test_full_mnist_from_a_folder_of_pngs_matches_tfds(tmp_path: Path) -> None:
    """The issue's check: all of MNIST written as PNG files by class, Larq's MNIST
    network trained from the folder and from TFDS: test accuracies within 0.3 points.
    Its full-precision twin, whose accuracy varies less from one example order to
    another than the binary network's (about 0.2 points, measured, with
    ``scripts/folder_vs_tfds.py --seeds 2``), so that the test measures the data."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
    import folder_vs_tfds

    folder = folder_vs_tfds.write_mnist_folder(tmp_path / "mnist_png")
    assert sum(1 for _ in folder.glob("*/*/*.png")) == 70_000
    accuracy = {name: folder_vs_tfds.test_accuracy(dataset, 6, tmp_path / "runs", name,
                                                   binary=False)
                for name, dataset in (("tfds", "mnist"), ("folder", str(folder)))}
    assert accuracy["tfds"] > 0.98
    assert abs(accuracy["folder"] - accuracy["tfds"]) <= 0.003, accuracy


@pytest.mark.parametrize("crop", [False, True])
def test_a_file_corrupt_inside_is_named_when_it_fails_to_decode(tmp_path: Path,
                                                                crop: bool) -> None:
    """A PNG whose header and end are intact but whose pixels are damaged passes the
    checks made before training; its failure (filling the cache, or mid-epoch where a
    random crop decodes) names it (``error``), or it is dropped (``skip``)."""
    from bnn_cli import api

    root = _write_folder(tmp_path / "photos", 24, [(20, 20)])
    victim = sorted(root.glob("train/c0/*.png"))[0]
    damaged = bytearray(victim.read_bytes())
    damaged[60:400] = bytes((b * 7 + 3) % 256 for b in damaged[60:400])
    victim.write_bytes(bytes(damaged))
    config = tmp_path / "c.yaml"
    config.write_text(
        "model: {layers: [{type: Flatten}, {type: Dense, units: 3, activation: softmax}]}\n"
        f"data:\n  dataset: {root}\n  train_split: train\n  validation_split: null\n"
        "  preprocessing: [{type: rescale, max_value: 255, range: [0, 1]}]\n"
        + ("  augmentation: [{type: random_resized_crop, height: 8, width: 8}]\n"
           if crop else "")
        + "training: {epochs: 1, batch_size: 8}\n")
    with pytest.raises(UserError, match=f"do not decode: {victim}.*bad_images: skip"):
        api.train(config, output=tmp_path / "runs")
    run = api.train(config, "data.bad_images=skip", output=tmp_path / "runs")
    assert run.record.status == "completed"


def test_flips_mirror_exactly_the_images_their_draws_pick() -> None:
    """The batched flip (a gather of reversed indices) against its definition, and the
    per-image flip that follows a random-resized crop against a batch of one."""
    x = tf.random.uniform([16, 5, 7, 3], seed=1)
    seed = tf.constant([3, 4])
    lr_seed = tf.random.experimental.stateless_split(seed, num=2)[0]
    flipped = images.random_flip(x, "horizontal", seed).numpy()
    chosen = tf.random.stateless_uniform([16], lr_seed).numpy() < 0.5
    assert 0 < chosen.sum() < 16
    np.testing.assert_array_equal(flipped[chosen], x.numpy()[chosen][:, :, ::-1])
    np.testing.assert_array_equal(flipped[~chosen], x.numpy()[~chosen])
    for mode in ("horizontal", "vertical", "horizontal_and_vertical"):
        np.testing.assert_array_equal(images.random_flip_one(x[3], mode, seed),
                                      images.random_flip(x[3:4], mode, seed)[0])


def test_a_shard_of_tfds_files_reads_only_its_files(tmp_path: Path) -> None:
    """A multi-worker job's pipeline for worker i of n reads files i, i+n, ... only, as
    TensorFlow's FILE sharding assigns them; together the shards read every example."""
    root = _sharded_tfds_directory(tmp_path / "shards" / "1.0.0")
    cfg = DataConfig(dataset=str(root), train_split="train", validation_split=None,
                     preprocessing=[], cache=False, shuffle_buffer=20)
    assert data.training_files(cfg, None) == 4

    def shard_values(index: int) -> list[int]:
        ds = data.training_epochs(cfg, first=0, end=1, steps=2, batch_size=10, seed=0,
                                  data_dir=None, shard=data.Shard(index, 2))
        return sorted(int(v) for x, _ in ds for v in x.numpy()[:, 0, 0, 0])

    first, second = shard_values(0), shard_values(1)
    assert {v // 10 for v in first} == {0, 2} and {v // 10 for v in second} == {1, 3}
    assert sorted(first + second) == list(range(40))
    # More steps than the shard holds: it goes round again (every worker takes the
    # epoch's steps, whatever the sizes of their shards).
    longer = data.training_epochs(cfg, first=0, end=1, steps=3, batch_size=10, seed=0,
                                  data_dir=None, shard=data.Shard(0, 2))
    assert sum(1 for _ in longer) == 3


def test_a_shard_of_a_folder_reads_every_other_file_and_a_cached_split_none(
        photos: Path) -> None:
    cfg = _config(photos, cache=False)
    files = data.training_files(cfg, None)
    assert files > 2
    labels = []
    for index in range(2):
        ds = data.training_epochs(cfg, first=0, end=1, steps=1, batch_size=files // 2,
                                  seed=0, data_dir=None, shard=data.Shard(index, 2))
        labels.append(next(iter(ds))[1].numpy())
    assert len(labels[0]) == files // 2
    assert data.training_files(_config(photos, cache=True), None) == 0  # held in memory
