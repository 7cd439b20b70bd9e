"""The data half: the ``sklearn_digits`` TFDS builder and the input pipeline.

Nothing here may reach the network: a module-wide fixture makes every socket connect and
every TFDS GCS look-up fail loudly, so a test that tried would error out.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from bnn_cli._keras import tf

# isort: split
# TFDS after bnn_cli._keras, so TensorFlow is loaded with this package's settings.
import tensorflow_datasets as tfds
from conftest import catalog_metadata

from bnn_cli.config.schema import DataConfig
from bnn_cli.data import digits
from bnn_cli.data import pipeline as data
from bnn_cli.errors import UserError

SHARED_TFDS = Path(__file__).resolve().parents[2] / "shared" / "tfds"
DIGITS_COUNTS = (178, 182, 177, 183, 181, 182, 181, 179, 174, 180)  # per class, sklearn


@pytest.fixture(scope="module", autouse=True)
def no_network() -> Iterator[None]:
    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError("a test tried to reach the network")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(socket.socket, "connect", refuse)
        mp.setattr("tensorflow_datasets.core.utils.gcs_utils.exists", refuse)
        yield


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A data_dir with sklearn_digits prepared by a plain ``tfds.load(download=True)``."""
    path = str(tmp_path_factory.mktemp("tfds"))
    tfds.load(digits.NAME, split="train", data_dir=path, download=True)
    return path


def _arrays(ds: tf.data.Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Concatenate every batch of an (inputs, labels) pipeline."""
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in ds], strict=True)
    return np.concatenate(xs), np.concatenate(ys)


def _load(cfg: DataConfig, split: str, digits_dir: str, **kwargs: object) -> tf.data.Dataset:
    args = {"training": False, "batch_size": 64, "seed": 0, "data_dir": digits_dir, **kwargs}
    return data.load_split(cfg, split, **args)


# --- the sklearn_digits builder ------------------------------------------------------


def _examples(data_dir: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    ds = tfds.load(digits.NAME, split=split, data_dir=data_dir, download=False)
    batch = next(iter(tfds.as_numpy(ds.batch(10_000))))
    return batch["image"], batch["label"]


def test_digits_builder_goes_through_tfds_load(digits_dir: str) -> None:
    ds, info = tfds.load(digits.NAME, split="test", data_dir=digits_dir, with_info=True)
    assert isinstance(ds, tf.data.Dataset)
    assert info.full_name == "sklearn_digits/1.0.0"
    assert {s: info.splits[s].num_examples for s in info.splits} == {"train": 1438, "test": 359}
    assert info.features["image"].shape == (8, 8, 1)
    assert info.features["label"].num_classes == 10
    assert info.supervised_keys == ("image", "label")


def test_digits_examples_dtypes_ranges_and_stratified_split(digits_dir: str) -> None:
    labels = []
    for split, size in (("train", 1438), ("test", 359)):
        images, split_labels = _examples(digits_dir, split)
        assert images.shape == (size, 8, 8, 1) and images.dtype == np.uint8
        assert images.min() == 0 and images.max() == 255
        assert set(split_labels) == set(range(10))
        labels.append(split_labels)
    test_counts = np.bincount(labels[1], minlength=10)
    assert test_counts.tolist() == [(n + 2) // 5 for n in DIGITS_COUNTS]
    assert (np.bincount(labels[0]) + test_counts).tolist() == list(DIGITS_COUNTS)


def test_digits_pixel_mapping_and_content() -> None:
    mapped = digits.to_uint8_pixels(np.arange(17))
    assert mapped.tolist()[:2] == [0, 16] and mapped[8] == 128 and mapped[16] == 255
    assert np.all(np.diff(mapped.astype(int)) > 0)
    images, labels = digits._load_arrays()
    assert images.shape == (1797, 8, 8, 1) and labels.shape == (1797,)


def test_digits_prepares_identically_twice(digits_dir: str, tmp_path: Path) -> None:
    tfds.builder(digits.NAME, data_dir=str(tmp_path)).download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False)
    )
    for split in ("train", "test"):
        for first, second in zip(
            _examples(digits_dir, split), _examples(str(tmp_path), split), strict=True
        ):
            np.testing.assert_array_equal(first, second)


def test_digits_split_matches_scikit_learn_content(digits_dir: str) -> None:
    images, _ = digits._load_arrays()
    served = np.concatenate([_examples(digits_dir, s)[0] for s in ("train", "test")])
    # Same multiset of images: every scikit-learn example is served exactly once.
    assert sorted(map(bytes, served)) == sorted(map(bytes, images))


# --- the pipeline on digits ----------------------------------------------------------


def test_batches_shapes_and_exact_rescale(digits_dir: str) -> None:
    ds = _load(DataConfig(), "train", digits_dir)
    assert ds.element_spec[0].shape.as_list() == [None, 8, 8, 1]
    first_x, first_y = next(iter(ds))
    assert first_x.shape == (64, 8, 8, 1) and first_x.dtype == tf.float32
    assert first_y.shape == (64,)
    x, y = _arrays(ds)
    assert x.shape == (1438, 8, 8, 1)
    assert x.min() == -1.0 and x.max() == 1.0  # exactly, not just close
    assert set(y) == set(range(10))


def test_rescale_to_other_range(digits_dir: str) -> None:
    cfg = DataConfig.model_validate({"preprocessing": [{"type": "rescale", "range": [0, 1]}]})
    x, _ = _arrays(_load(cfg, "test", digits_dir))
    assert x.min() == 0.0 and x.max() == 1.0


def test_one_hot_labels(digits_dir: str) -> None:
    _, sparse = _arrays(_load(DataConfig(), "test", digits_dir))
    _, dense = _arrays(_load(DataConfig(one_hot=True), "test", digits_dir))
    assert dense.shape == (359, 10) and dense.dtype == np.float32
    np.testing.assert_array_equal(dense.sum(axis=1), 1.0)
    np.testing.assert_array_equal(dense.argmax(axis=1), sparse)


def _order(seed: int | None, digits_dir: str, cfg: DataConfig | None = None) -> np.ndarray:
    ds = _load(cfg or DataConfig(), "train", digits_dir, training=True, seed=seed)
    return _arrays(ds)[0].reshape(1438, -1).sum(axis=1)  # an order-sensitive fingerprint


def test_shuffle_is_seeded(digits_dir: str) -> None:
    unshuffled = _arrays(_load(DataConfig(), "train", digits_dir))[0].reshape(1438, -1).sum(1)
    same_a, same_b = _order(7, digits_dir), _order(7, digits_dir)
    np.testing.assert_array_equal(same_a, same_b)
    assert not np.array_equal(same_a, _order(8, digits_dir))
    assert not np.array_equal(same_a, unshuffled)
    assert sorted(same_a) == sorted(unshuffled)  # a permutation, nothing lost


def test_reshuffles_each_epoch(digits_dir: str) -> None:
    ds = _load(DataConfig(), "train", digits_dir, training=True, seed=3)
    first, second = _arrays(ds)[1], _arrays(ds)[1]
    assert not np.array_equal(first, second)


def test_partial_shuffle_buffer_is_honoured(digits_dir: str) -> None:
    # A buffer smaller than the split keeps tf.data's windowed shuffle: the first example
    # out is one of the first `buffer` in (a full shuffle would pick from all 1438).
    ordered = _arrays(_load(DataConfig(), "train", digits_dir))[0].reshape(1438, -1).sum(1)
    for seed in range(5):
        near = _order(seed, digits_dir, DataConfig(shuffle_buffer=10))
        assert sorted(near) == sorted(ordered)
        assert near[0] in ordered[:10]


def test_no_shuffle_keeps_order(digits_dir: str) -> None:
    cfg = DataConfig(shuffle_buffer=0)
    ordered = _arrays(_load(DataConfig(), "train", digits_dir))[1]
    kept = _arrays(_load(cfg, "train", digits_dir, training=True))[1]
    np.testing.assert_array_equal(kept, ordered)


AUGMENTED = DataConfig.model_validate(
    {
        "augmentation": [
            {"type": "random_flip", "mode": "horizontal_and_vertical"},
            {"type": "random_crop", "height": 8, "width": 8, "padding": 2},
        ]
    }
)


def test_augmentation_shapes_values_and_seeding(digits_dir: str) -> None:
    x1, y1 = _arrays(_load(AUGMENTED, "train", digits_dir, training=True, seed=5))
    x2, y2 = _arrays(_load(AUGMENTED, "train", digits_dir, training=True, seed=5))
    assert x1.shape == (1438, 8, 8, 1)
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)
    plain, _ = _arrays(_load(DataConfig(), "train", digits_dir, training=True, seed=5))
    assert not np.array_equal(x1, plain)  # same order (same shuffle seed), new pixels
    # Padding is what a black pixel becomes (-1), so the value range is unchanged.
    assert x1.min() == -1.0 and x1.max() <= 1.0
    # Flips keep every pixel and crops only drop some or add black ones, so the ink
    # (distance from black) of an image never grows.
    ink = (x1 + 1).reshape(1438, -1).sum(1)
    assert np.all(ink <= (plain + 1).reshape(1438, -1).sum(1) + 1e-3)


def test_augmentation_only_applies_to_training(digits_dir: str) -> None:
    plain, _ = _arrays(_load(DataConfig(), "test", digits_dir))
    evaluated, _ = _arrays(_load(AUGMENTED, "test", digits_dir))
    np.testing.assert_array_equal(plain, evaluated)


def test_smaller_crop_is_centre_crop_outside_training(digits_dir: str) -> None:
    cfg = DataConfig.model_validate(
        {"augmentation": [{"type": "random_crop", "height": 6, "width": 6}]}
    )
    assert data.dataset_info(cfg, digits_dir).input_shape == (6, 6, 1)
    train_x, _ = next(iter(_load(cfg, "train", digits_dir, training=True)))
    test_x, _ = _arrays(_load(cfg, "test", digits_dir))
    plain, _ = _arrays(_load(DataConfig(), "test", digits_dir))
    assert train_x.shape[1:] == (6, 6, 1)
    np.testing.assert_array_equal(test_x, plain[:, 1:7, 1:7, :])


def test_resize_and_normalize(digits_dir: str) -> None:
    cfg = DataConfig.model_validate(
        {
            "preprocessing": [
                {"type": "rescale", "range": [0, 1]},
                {"type": "resize", "height": 16, "width": 12, "method": "nearest"},
                {"type": "normalize", "mean": [0.5], "std": [0.25]},
            ]
        }
    )
    x, _ = _arrays(_load(cfg, "test", digits_dir))
    assert x.shape == (359, 16, 12, 1)
    assert x.min() == -2.0 and x.max() == 2.0
    assert data.dataset_info(cfg, digits_dir).input_shape == (16, 12, 1)


def test_split_slices(digits_dir: str) -> None:
    x, _ = _arrays(_load(DataConfig(), "train[:50%]", digits_dir))
    assert len(x) == 719
    x, _ = _arrays(_load(DataConfig(), "train[1000:]+test", digits_dir))
    assert len(x) == 438 + 359


def test_dataset_info_for_digits(digits_dir: str) -> None:
    info = data.dataset_info(DataConfig(), digits_dir)
    assert info.full_name == "sklearn_digits/1.0.0"
    assert info.num_classes == 10 and info.class_names == tuple("0123456789")
    assert info.input_shape == (8, 8, 1)
    assert info.split_sizes == {"train": 1438, "test": 359}
    assert info.num_examples("train[:50%]") == 719
    assert info.steps_per_epoch("train", 32) == 45  # 1438 / 32 = 44.9
    assert info.prepared_dir == os.path.join(digits_dir, "sklearn_digits", "1.0.0")


def test_digits_prepared_on_first_use_by_the_pipeline(tmp_path: Path) -> None:
    ds = data.load_split(
        DataConfig(dataset="sklearn_digits:1.0.0"), "test",
        training=False, batch_size=400, seed=None, data_dir=str(tmp_path),
    )
    assert next(iter(ds))[0].shape == (359, 8, 8, 1)
    assert (tmp_path / "sklearn_digits" / "1.0.0" / "dataset_info.json").is_file()


def test_resolve_data_dir_precedence(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TFDS_DATA_DIR", "/env")
    assert data.resolve_data_dir("/config", "/cli") == "/cli"
    assert data.resolve_data_dir("/config", None) == "/config"
    assert data.resolve_data_dir(None, None) == "/env"
    monkeypatch.delenv("TFDS_DATA_DIR")
    assert data.resolve_data_dir(None, None) is None
    assert data.resolve_data_dir("~/d", None) == os.path.expanduser("~/d")


# --- real MNIST, read in place -------------------------------------------------------


def _listing(root: Path) -> list[tuple[str, int, float]]:
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime) for p in root.rglob("*"))


def test_real_mnist_read_in_place() -> None:
    if not (SHARED_TFDS / "mnist" / "3.0.1" / "dataset_info.json").is_file():
        pytest.skip(f"real MNIST is not prepared at {SHARED_TFDS} (the shared TFDS data_dir)")
    before = _listing(SHARED_TFDS)
    cfg = DataConfig(dataset="mnist:3.0.1", shuffle_buffer=1000)
    info = data.dataset_info(cfg, str(SHARED_TFDS))
    assert info.split_sizes == {"train": 60000, "test": 10000}
    assert info.input_shape == (28, 28, 1) and info.num_classes == 10
    ds = data.load_split(
        cfg, "train", training=True, batch_size=128, seed=0, data_dir=str(SHARED_TFDS)
    )
    x, y = next(iter(ds))
    assert x.shape == (128, 28, 28, 1) and y.shape == (128,)
    assert float(tf.reduce_min(x)) == -1.0 and float(tf.reduce_max(x)) == 1.0
    assert _listing(SHARED_TFDS) == before  # nothing written there


# --- a TFDS catalog dataset through tfds.testing.mock_data ---------------------------


@pytest.fixture()
def cifar10_metadata(tmp_path: Path) -> str:
    return catalog_metadata("cifar10", {"train": 50000, "test": 10000}, tmp_path)


def test_cifar10_through_mock_data(cifar10_metadata: str) -> None:
    cfg = DataConfig.model_validate(
        {
            "dataset": "cifar10",
            "one_hot": True,
            "preprocessing": [
                {"type": "rescale", "range": [0, 1]},
                {"type": "resize", "height": 16, "width": 16},
                {"type": "normalize", "mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            ],
            "augmentation": [
                {"type": "random_flip"},
                {"type": "random_crop", "height": 12, "width": 12, "padding": 2},
            ],
        }
    )
    with tfds.testing.mock_data(num_examples=10, data_dir=cifar10_metadata):
        info = data.dataset_info(cfg, cifar10_metadata)
        train = data.load_split(cfg, "train", training=True, batch_size=4, seed=0,
                                data_dir=cifar10_metadata)
        test = data.load_split(cfg, "test", training=False, batch_size=4, seed=0,
                               data_dir=cifar10_metadata)
        train_x, train_y = _arrays(train)
        test_x, _ = _arrays(test)
    assert info.split_sizes == {"train": 50000, "test": 10000}
    assert info.input_shape == (12, 12, 3) and info.num_classes == 10
    assert train_x.shape == (10, 12, 12, 3) and test_x.shape == (10, 12, 12, 3)
    assert train_y.shape == (10, 10)
    assert train_x.min() >= -2.0 and train_x.max() <= 2.0
    assert train_x.min() == -2.0  # padding = a black pixel after preprocessing


# --- errors a user can act on --------------------------------------------------------


def _error(cfg: DataConfig, split: str = "train", data_dir: str | None = None) -> str:
    with pytest.raises(UserError) as caught:
        data.load_split(cfg, split, training=False, batch_size=8, seed=0, data_dir=data_dir)
    message = str(caught.value)
    assert "\n" not in message  # one paragraph
    return message


@pytest.mark.parametrize("dataset", ["mnist", "fashion_mnist:3.0.1"])
def test_registered_but_not_prepared_is_a_clear_error(dataset: str, tmp_path: Path) -> None:
    message = _error(DataConfig(dataset=dataset), data_dir=str(tmp_path))
    name = dataset.split(":")[0]
    assert repr(name) in message and "3.0.1" in message
    assert str(tmp_path) in message
    assert f"tfds build {name}" in message
    assert "--data-dir" in message and "TFDS_DATA_DIR" in message
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing downloaded


def test_not_prepared_names_versions_that_are_there(tmp_path: Path) -> None:
    (tmp_path / "mnist" / "3.0.0").mkdir(parents=True)
    message = _error(DataConfig(dataset="mnist"), data_dir=str(tmp_path))
    assert "versions found there: 3.0.0" in message and "'mnist:3.0.0'" in message


def test_unknown_dataset_suggests_a_name(tmp_path: Path) -> None:
    message = _error(DataConfig(dataset="mnsit"), data_dir=str(tmp_path))
    assert "unknown dataset 'mnsit'" in message and "did you mean 'mnist'" in message
    message = _error(DataConfig(dataset="sklearn_digit"), data_dir=str(tmp_path))
    assert "did you mean 'sklearn_digits'" in message


def test_unsupported_version_and_remote_namespace(tmp_path: Path) -> None:
    assert "1.0.0" in _error(DataConfig(dataset="mnist:1.0.0"), data_dir=str(tmp_path))
    message = _error(DataConfig(dataset="huggingface:mnist"), data_dir=str(tmp_path))
    assert "namespace 'huggingface'" in message


def test_bad_split_names_the_available_ones(digits_dir: str) -> None:
    message = _error(DataConfig(), "validation", digits_dir)
    assert "'validation'" in message and "train (1438)" in message and "test (359)" in message
    assert "train[:90%]" in message
    assert "bad split" in _error(DataConfig(), "train[:200%]", digits_dir)


@pytest.mark.parametrize(("key", "value"), [("input_key", "img"), ("label_key", "labels")])
def test_bad_keys_list_the_features(digits_dir: str, key: str, value: str) -> None:
    message = _error(DataConfig(**{key: value}), data_dir=digits_dir)
    assert f"{key} {value!r}" in message and "image, label" in message
    assert "did you mean" in message


def test_crop_that_cannot_fit(digits_dir: str) -> None:
    cfg = DataConfig.model_validate(
        {"augmentation": [{"type": "random_crop", "height": 12, "width": 12, "padding": 1}]}
    )
    assert "does not fit" in _error(cfg, data_dir=digits_dir)


@pytest.mark.parametrize("shuffle_buffer", [10_000, 10])  # one tensor; tf.data's shuffle
def test_training_epochs_depend_on_the_epoch_alone(digits_dir: str, shuffle_buffer: int) -> None:
    """The loop's one dataset for a stage: epoch 3 is the same batches (order and
    augmentation) whether the stage started at epoch 0 or resumed at 2, and each
    epoch differs from the one before."""
    cfg = DataConfig(shuffle_buffer=shuffle_buffer, augmentation=[
        {"type": "random_crop", "height": 8, "width": 8, "padding": 1}])
    steps = 5

    def epochs(first: int) -> list[tuple[np.ndarray, np.ndarray]]:
        ds = data.training_epochs(cfg, first=first, end=4, steps=steps, batch_size=16,
                                  seed=7, data_dir=digits_dir)
        batches = [(x.numpy(), y.numpy()) for x, y in ds]
        assert len(batches) == steps * (4 - first)
        return batches

    from_start, resumed = epochs(0), epochs(2)
    for (xa, ya), (xb, yb) in zip(from_start[2 * steps:], resumed, strict=True):
        np.testing.assert_array_equal(ya, yb)
        np.testing.assert_array_equal(xa, xb)
    assert not np.array_equal(from_start[0][1], from_start[steps][1])


def test_processes_that_prepare_the_digits_at_once_all_succeed(tmp_path: Path) -> None:
    """Sweep jobs, or hosts sharing a data_dir, start at once on a fresh machine: each
    `bnn check` prepares the embedded digits (one at a time, under a lock), none fails."""
    import subprocess
    import sys

    from conftest import QUICKSTART

    fresh = tmp_path / "fresh-tfds"
    procs = [subprocess.Popen([sys.executable, "-m", "bnn_cli.cli", "check", str(QUICKSTART),
                               "--data-dir", str(fresh)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for proc in procs:
        err = proc.communicate(timeout=300)[1]
        assert proc.returncode == 0, err[-2000:]
    assert len(list(fresh.glob("sklearn_digits/*/dataset_info.json"))) == 1
