"""Where the examples come from: a TFDS dataset, a TFDS dataset directory, or a folder
of images by class, opened as one :class:`Source` with its :class:`DataInfo`.

``data.dataset`` is a folder when it names one (relative to the config file's folder,
see :func:`dataset_path`): a TFDS dataset directory (with ``dataset_info.json``, prepared
elsewhere) is opened with ``tfds.builder_from_directory``, any other folder as images by
class (:mod:`bnn_cli.data.folder`). Anything else is a TFDS name, read from a TFDS
data_dir; nothing is ever downloaded: a dataset that is not prepared there is a
:class:`~bnn_cli.errors.UserError` that says how to provide it. The one exception is
``sklearn_digits`` (:mod:`bnn_cli.data.digits`), whose data ships with scikit-learn; it
is prepared into the data_dir on first use.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# TensorFlow must be loaded through bnn_cli._keras (legacy Keras, quiet C++ logs) before
# TFDS imports it, so the import order below is deliberate.
import bnn_cli._keras  # noqa: F401

# isort: split
import tensorflow_datasets as tfds
from tensorflow_datasets.core import naming
from tensorflow_datasets.core.utils import file_utils

from bnn_cli.config import schema
from bnn_cli.data import digits
from bnn_cli.data.folder import Folder, ImageFile, is_image_folder, scan
from bnn_cli.errors import UserError, did_you_mean

EMBEDDED_DATASETS = frozenset({digits.NAME})
"""Datasets whose data ships with a Python package: prepared on first use, offline."""


@dataclass(frozen=True)
class DataInfo:
    """What a model builder, a training loop and ``bnn check`` need to know of a dataset."""

    full_name: str  # "mnist/3.0.1" (TFDS), or the folder read
    prepared_dir: str  # the folder the examples are read from
    num_classes: int | None  # None when the label is not a ClassLabel
    class_names: tuple[str, ...] | None
    input_shape: tuple[int | None, ...]  # one example as the model sees it
    split_sizes: dict[str, int]  # the dataset's own splits, e.g. {"train": 60000, ...}
    kind: str = "tfds"  # tfds, tfds_directory or image_folder
    image_sizes: tuple[tuple[int, int], ...] = ()  # of a folder: the commonest (h, w)
    skipped: tuple[str, ...] = ()  # of a folder: files left out (bad_images: skip)
    _splits: Any = field(default=None, repr=False, compare=False)  # a TFDS SplitDict

    def num_examples(self, split: str) -> int:
        """Examples in ``split``, slices included (``"train[:90%]"``)."""
        return sum(stop - start for _, start, stop in self.ranges(split))

    def ranges(self, split: str) -> list[tuple[str, int, int]]:
        """``split`` (TFDS syntax: ``"train[:90%]+test"``) as (split, start, stop) ranges
        of the dataset's own splits, or a UserError naming the real splits."""
        available = ", ".join(f"{s} ({n})" for s, n in self.split_sizes.items())
        try:
            parts = tfds.core.ReadInstruction.from_spec(split).to_absolute(self._splits)
        except (KeyError, ValueError, AssertionError, AttributeError) as err:
            raise UserError(
                f"bad split {split!r} for dataset {self.full_name!r}: {_first_line(err)}; "
                f"available splits: {available}; slices like 'train[:90%]' or "
                "'train[1000:]' work too") from None
        ranges = [(p.splitname, p.from_ or 0,
                   self.split_sizes[p.splitname] if p.to is None else p.to) for p in parts]
        if sum(stop - start for _, start, stop in ranges) <= 0:
            raise UserError(f"split {split!r} of dataset {self.full_name!r} has no examples")
        return ranges

    def steps_per_epoch(self, split: str, batch_size: int) -> int:
        """Batches in one pass over ``split`` (the last batch may be smaller)."""
        return math.ceil(self.num_examples(split) / batch_size)


@dataclass(frozen=True)
class Source:
    """An opened dataset: a TFDS builder, or a scanned folder of images."""

    info: DataInfo
    builder: tfds.core.DatasetBuilder | None = None
    folder: Folder | None = None

    def files(self, split: str) -> list[ImageFile]:
        """A folder's files of ``split`` (slices included), in their fixed order."""
        assert self.folder is not None
        return [f for name, start, stop in self.info.ranges(split)
                for f in self.folder.splits[name][start:stop]]


def resolve_data_dir(config_dir: str | None, cli_dir: str | None) -> str | None:
    """The TFDS data_dir to use: ``--data-dir`` > config ``data_dir`` > ``$TFDS_DATA_DIR``.

    ``None`` means TFDS's own default (``~/tensorflow_datasets``).
    """
    for candidate in (cli_dir, config_dir, os.environ.get("TFDS_DATA_DIR")):
        if candidate:  # An empty value (e.g. ``TFDS_DATA_DIR=``) counts as unset.
            return os.path.expanduser(candidate)
    return None


def dataset_path(dataset: str, base: Path | None) -> Path | None:
    """The folder ``data.dataset`` names, absolute, or None for a TFDS name.

    A relative path is relative to ``base`` (the config file's folder; the working
    directory for a config given as text). An existing folder wins over a TFDS name; a
    value that starts with ``/``, ``.`` or ``~`` must be a folder.
    """
    path = Path(dataset).expanduser()
    if not path.is_absolute():
        path = (base or Path.cwd()) / path
    if path.is_dir():
        return path.resolve()
    if dataset.startswith(("/", ".", "~")):
        raise DatasetNameError(f"dataset {dataset!r}: no such folder ({path})")
    return None


_SOURCES: dict[tuple, Source] = {}


def open_source(data: schema.DataConfig, data_dir: str | None) -> Source:
    """The dataset ``data.dataset`` names, opened (a folder scanned once per process)."""
    path = dataset_path(data.dataset, None)
    key = (str(path) if path else data.dataset, data_dir, data.max_pixels, data.bad_images,
           data.input_key, data.label_key)
    if key not in _SOURCES:
        if path is None:
            source = _tfds_source(_open_builder(data, data_dir), data, "tfds")
        elif is_image_folder(path):
            source = _folder_source(path, data)
        else:
            source = _tfds_source(_open_directory(path, data), data, "tfds_directory")
        _SOURCES[key] = source
    return _SOURCES[key]


def _tfds_source(builder: tfds.core.DatasetBuilder, data: schema.DataConfig,
                 kind: str) -> Source:
    info = builder.info
    label = info.features[data.label_key]
    names = getattr(label, "names", None)
    return Source(DataInfo(
        full_name=info.full_name,
        prepared_dir=os.fspath(builder.data_dir),
        num_classes=getattr(label, "num_classes", None),
        class_names=tuple(names) if names else None,
        input_shape=tuple(info.features[data.input_key].shape),
        split_sizes={name: split.num_examples for name, split in info.splits.items()},
        kind=kind,
        _splits=info.splits,
    ), builder=builder)


def _folder_source(path: Path, data: schema.DataConfig) -> Source:
    if (data.input_key, data.label_key) != ("image", "label"):
        raise UserError(f"a folder of images has the features 'image' and 'label'; set "
                        f"data.input_key: image and data.label_key: label (not "
                        f"{data.input_key!r} and {data.label_key!r})")
    try:
        folder = scan(path, max_pixels=data.max_pixels, skip_bad=data.bad_images == "skip")
    except UserError as exc:  # the folder data.dataset names: locate it there
        raise DataKeyError(str(exc), ("dataset",)) from None
    if folder.bad:
        sys.stderr.write(f"left out {len(folder.bad)} unusable file(s) of {path} "
                         "(data.bad_images: skip); `bnn check` lists them\n")
    sizes = {name: len(files) for name, files in folder.splits.items()}
    splits = tfds.core.SplitDict([tfds.core.SplitInfo(name=name, shard_lengths=[n],
                                                      num_bytes=0)
                                  for name, n in sizes.items()])
    height, width = folder.common_size() or (None, None)
    return Source(DataInfo(
        full_name=str(path),
        prepared_dir=str(path),
        num_classes=len(folder.classes),
        class_names=folder.classes,
        input_shape=(height, width, folder.channels),
        split_sizes=sizes,
        kind="image_folder",
        image_sizes=tuple(folder.sizes()),
        skipped=tuple(f"{b.path}: {b.reason}" for b in folder.bad),
        _splits=splits,
    ), folder=folder)


def _open_directory(path: Path, data: schema.DataConfig) -> tfds.core.DatasetBuilder:
    """A TFDS dataset directory prepared elsewhere (``tfds.builder_from_directory``)."""
    try:
        builder = tfds.builder_from_directory(os.fspath(path))
    except Exception as err:  # noqa: BLE001 - TFDS raises many kinds for a bad folder
        raise UserError(f"{path}: cannot open it as a TFDS dataset directory: "
                        f"{_first_line(err)}; point data.dataset at the folder that "
                        "holds dataset_info.json (e.g. .../mnist/3.0.1)") from None
    _check_keys(builder, data)
    return builder


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
        builder = _prepare_embedded(builder, data.dataset, data_dir)
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


def _prepare_embedded(builder: tfds.core.DatasetBuilder, dataset: str,
                      data_dir: str | None) -> tfds.core.DatasetBuilder:
    """Write an embedded dataset into the data_dir; it reads local files, never the network.
    One process at a time (a lock file beside it): sweeps' jobs, or hosts sharing a
    data_dir, start at once on a fresh machine, and TFDS's rename into place fails for all
    but one. Returns the prepared builder."""
    config = tfds.download.DownloadConfig(try_download_gcs=False)
    try:
        folder = Path(builder.data_dir).parent
        folder.mkdir(parents=True, exist_ok=True)
        with (folder / ".prepare.lock").open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # (released when the file closes)
            builder = tfds.builder(dataset, data_dir=data_dir)  # (another may have done it)
            if not builder.is_prepared():
                # TFDS prints its progress to stdout; keep stdout for results (`--json`).
                with contextlib.redirect_stdout(sys.stderr):
                    builder.download_and_prepare(download_config=config)
    except OSError as err:
        raise UserError(
            f"could not prepare dataset {builder.name!r} into {_where(data_dir)}: {err}; "
            "point `data_dir` (config), `--data-dir` or $TFDS_DATA_DIR at a writable folder"
        ) from None
    return builder


class DataKeyError(UserError):
    """A mistake at one key of the data section, which the config check reports at the
    key (file:line), as it reports its other keys."""

    def __init__(self, message: str, path: tuple[str | int, ...]) -> None:
        super().__init__(message)
        self.path = path


class DatasetNameError(DataKeyError):
    """``data.dataset`` names nothing that can be opened here."""

    def __init__(self, message: str) -> None:
        super().__init__(message, ("dataset",))


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


