"""scikit-learn's handwritten digits as a TFDS dataset, ``sklearn_digits``.

scikit-learn ships the 1797 8x8 digit images (values 0..16) inside its package, so
serving them through a TFDS builder gives the tool an offline dataset that travels
exactly the same ``tfds.load`` path as MNIST: the same features (``image``, ``label``),
the same data_dir layout, the same preprocessing. Importing this module registers the
builder; preparing it downloads nothing, it reads scikit-learn's bundled copy.

Pixels are mapped from 0..16 to 0..255 by ``(v * 255 + 8) // 16`` (integer arithmetic,
rounding halves up): 0 -> 0, 1 -> 16, 8 -> 128, 16 -> 255. The same
``rescale`` step as MNIST (``max_value: 255``) therefore applies unchanged.

The split is fixed: within each class the examples are permuted with
``numpy.random.RandomState(0)`` (whose stream NumPy guarantees never to change) and
the first ``(n + 2) // 5`` (20 %, rounded) go to ``test``. That gives 1438 ``train``
and 359 ``test`` examples, the same on every machine.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

# TensorFlow must be loaded through bnn_cli._keras (legacy Keras, quiet C++ logs) before
# TFDS imports it, so the import order below is deliberate.
import bnn_cli._keras  # noqa: F401

# isort: split
import tensorflow_datasets as tfds

NAME = "sklearn_digits"
NUM_CLASSES = 10
SPLIT_SEED = 0
TRAIN_EXAMPLES = 1438
TEST_EXAMPLES = 359

_DESCRIPTION = (
    "scikit-learn's bundled handwritten digits (the UCI optdigits test set): 1797 8x8 "
    "grey images, pixels mapped from 0..16 to 0..255 by (v * 255 + 8) // 16, and a fixed "
    "stratified 80/20 split (1438 train, 359 test)."
)

_CITATION = """\
@misc{alpaydin1998optdigits,
  author = {Alpaydin, E. and Kaynak, C.},
  title = {Optical Recognition of Handwritten Digits},
  year = {1998},
  howpublished = {UCI Machine Learning Repository},
  doi = {10.24432/C50P49}
}"""


def to_uint8_pixels(values: np.ndarray) -> np.ndarray:
    """Map digit intensities 0..16 onto 0..255 (``(v * 255 + 8) // 16``)."""
    # Integer arithmetic keeps the mapping exact and identical on every platform.
    return ((values.astype(np.int64) * 255 + 8) // 16).astype(np.uint8)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
    """The sorted example indices of ``train`` and ``test`` (stratified, fixed seed)."""
    rng = np.random.RandomState(SPLIT_SEED)
    test: list[np.ndarray] = []
    for label in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == label))
        test.append(members[: (len(members) + 2) // 5])
    test_idx = np.sort(np.concatenate(test))
    train_idx = np.setdiff1d(np.arange(len(labels)), test_idx)
    return {"train": train_idx, "test": test_idx}


def _load_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits as (N, 8, 8, 1) uint8 images and (N,) labels."""
    # Imported here: scikit-learn is slow to import and only preparing needs it.
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = to_uint8_pixels(digits.images.round())[..., np.newaxis]
    return images, digits.target.astype(np.int64)


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 handwritten digits (UCI optdigits test set), 10 classes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: 1438 train / 359 test, pixels 0..255."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=_DESCRIPTION,
            features=tfds.features.FeaturesDict(
                {
                    "image": tfds.features.Image(shape=(8, 8, 1)),
                    "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                }
            ),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html",
            citation=_CITATION,
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict:
        del dl_manager  # Nothing to download: the data ships with scikit-learn.
        images, labels = _load_arrays()
        return {
            split: self._generate_examples(images, labels, indices)
            for split, indices in split_indices(labels).items()
        }

    def _generate_examples(
        self, images: np.ndarray, labels: np.ndarray, indices: np.ndarray
    ) -> Iterator[tuple[int, dict[str, np.ndarray | int]]]:
        # The key is the index in scikit-learn's array, stable across preparations.
        for i in indices:
            yield int(i), {"image": images[i], "label": int(labels[i])}
