"""Shared test setup.

Larq (a test-only reference oracle) and bnn_cli both register plain names such as
``"SteSign"`` in Keras's global table. Larq is imported here, before any test module
imports bnn_cli, which is the order users porting from Larq meet: Larq's plain names
stay Larq's, bnn_cli's lookups and loaders use bnn_cli's own (see
tests/test_larq_side_by_side.py for both orders, each in a fresh process).
"""

import contextlib
import os

import pytest

os.environ["TF_USE_LEGACY_KERAS"] = "1"
# bnn's own default (bnn_cli/__init__.py), set before TensorFlow loads here as importing
# bnn_cli first would: runs in this process then compute with the same kernels as the
# `bnn` subprocesses that tests start, resume or compare with.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

# larq is a test extra; the tests that need it skip without it.
with contextlib.suppress(ImportError):
    import larq  # noqa: F401


@pytest.fixture(scope="session", autouse=True)
def _private_tfds_data_dir(tmp_path_factory):
    """Checking a config opens its dataset; the embedded digits are prepared once per
    session in a private data_dir, never in the user's ~/tensorflow_datasets."""
    saved = os.environ.get("TFDS_DATA_DIR")
    os.environ["TFDS_DATA_DIR"] = str(tmp_path_factory.mktemp("tfds"))
    yield
    if saved is None:
        os.environ.pop("TFDS_DATA_DIR", None)
    else:
        os.environ["TFDS_DATA_DIR"] = saved


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SHARED_TFDS = ROOT.parent / "shared" / "tfds"
"""Real MNIST and Fashion-MNIST, read in place (never copied)."""


def catalog_metadata(name: str, splits: dict[str, int], data_dir) -> str:
    """A data_dir holding only a TFDS dataset's metadata (its real split sizes), which is
    what ``tfds.testing.mock_data`` needs to serve random examples of that dataset."""
    import tensorflow_datasets as tfds

    builder = tfds.builder(name, data_dir=str(data_dir))
    template = dict(data_dir=builder.data_dir, dataset_name=name, filetype_suffix="tfrecord")
    builder.info.set_splits(tfds.core.SplitDict([
        tfds.core.SplitInfo(name=split, shard_lengths=[size], num_bytes=0,
                            filename_template=tfds.core.ShardedFileTemplate(split=split,
                                                                            **template))
        for split, size in splits.items()
    ]))
    os.makedirs(builder.data_dir)
    builder.info.write_to_directory(builder.data_dir)
    return str(data_dir)


MOCKED = {"cifar10": {"train": 50000, "test": 10000},
          "imagenet2012": {"train": 1281167, "validation": 50000}}
"""Datasets served as random examples (at their real split sizes) in tests."""


@contextlib.contextmanager
def dataset_for(dataset: str, tmp_path):
    """A TFDS data_dir that serves ``dataset`` in tests: the shared real data for MNIST,
    random examples through ``tfds.testing.mock_data`` for CIFAR-10 and ImageNet (random
    JPEGs of random sizes), and a fresh folder for the embedded digits (prepared on
    first use)."""
    import tensorflow_datasets as tfds

    if dataset in ("mnist", "fashion_mnist"):
        if not (SHARED_TFDS / dataset).is_dir():
            pytest.skip(f"{dataset} is not in {SHARED_TFDS}")
        yield str(SHARED_TFDS)
    elif dataset in MOCKED:
        data_dir = catalog_metadata(dataset, MOCKED[dataset], tmp_path)
        with tfds.testing.mock_data(num_examples=16, data_dir=data_dir):
            yield data_dir
    else:
        yield str(tmp_path)


QUICKSTART = ROOT / "configs" / "quickstart.yaml"
TINY = ["training.epochs=1", "training.steps_per_epoch=3", "training.batch_size=16"]
"""Overrides that make the quickstart a run of a few seconds."""


def train_tiny(output, *extra: str):
    """Train the tiny quickstart into ``output`` (a fresh folder); its run directory."""
    from bnn_cli.cli import main

    assert main(["train", str(QUICKSTART), *TINY, *extra, "--output", str(output)]) == 0
    (run,) = [p for p in output.iterdir() if p.is_dir() and not p.name.startswith(".")]
    return run
