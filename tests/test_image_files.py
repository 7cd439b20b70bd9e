"""A folder of images by class as a dataset: its two layouts, the mistakes in a folder
that ``bnn check`` locates at ``data.dataset``, and untrusted image files (truncated, not
images, formats TensorFlow cannot decode, a 900-megapixel PNG of a few MB), refused by
name with ``data.bad_images: error`` and left out, counted, with ``skip``.

The layout errors and the huge PNG run ``bnn check`` in a fresh process (exit code, no
traceback, peak memory); the rest call the CLI's ``main`` in-process, which is faster.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bnn_cli.cli import main
from bnn_cli.config.schema import DataConfig
from bnn_cli.data import folder as image_folder
from bnn_cli.data import pipeline as data

CLASSES = ("cat", "dog", "emu")
HUGE = 30_000  # the huge PNG's side: 900,000,000 grey pixels, 900 MB decoded
MEMORY_BUDGET = 2.5e9  # bytes of peak RSS for `bnn check` on a folder holding it
DECODED_MARGIN = 0.45e9  # ...and at most this over the same check without it: half the
# image decoded as grey bytes, so that even one grey decode (0.9 GB) shows
CLI_TIMEOUT = 180  # seconds for one `bnn check` process (about 5 s when all is well)

_CONFIG = """\
name: files
model:
  layers:
    - {{type: Flatten}}
    - {{type: Dense, units: {classes}, activation: softmax}}
data:
  dataset: {dataset}
  train_split: train
  validation_split: null
  test_split: train
training: {{epochs: 1, batch_size: 8}}
"""


# --- helpers: images, folders, configs, the CLI ---------------------------------------


def _noise(height: int, width: int, channels: int = 1, seed: int = 0) -> np.ndarray:
    """Random uint8 pixels, [H, W] (grey) or [H, W, C]."""
    shape = (height, width) if channels == 1 else (height, width, channels)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def _encoded(array: np.ndarray, fmt: str, **options: object) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **options)
    return out.getvalue()


def _folder(root: Path, counts: dict[str, int], seed: int = 0) -> Path:
    """``root/<class>/<i>.png``: ``counts[class]`` distinct 8x8 grey PNGs per class."""
    for k, (name, count) in enumerate(counts.items()):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            Image.fromarray(_noise(8, 8, seed=seed + 100 * k + i)).save(root / name / f"{i}.png")
    return root


def _config(folder: Path, dataset: str, classes: int = len(CLASSES)) -> tuple[Path, str]:
    """``folder/cfg.yaml``, a Flatten+Dense model on ``dataset``; with where its
    ``data.dataset`` is, as errors locate it (``/.../cfg.yaml:7:``)."""
    text = _CONFIG.format(dataset=dataset, classes=classes)
    line = next(i for i, row in enumerate(text.splitlines(), 1)
                if row.strip().startswith("dataset:"))
    path = folder / "cfg.yaml"
    path.write_text(text)
    return path, f"{path}:{line}:"


def _bnn(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``bnn ARGS`` in a fresh Python process."""
    return subprocess.run([sys.executable, "-m", "bnn_cli.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=CLI_TIMEOUT)


def _main(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``bnn ARGS`` in this process: (exit code, stdout, stderr)."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _check_json(capsys: pytest.CaptureFixture[str], config: Path, *overrides: str) -> dict:
    """The ``data`` section of ``bnn check --json``, which must pass."""
    code, out, err = _main(capsys, "check", str(config), *overrides, "--json")
    assert code == 0, err
    return json.loads(out)["data"]


def _png_chunk(kind: bytes, payload: bytes) -> bytes:
    return (struct.pack(">I", len(payload)) + kind + payload
            + struct.pack(">I", zlib.crc32(kind + payload)))


def _black_png(path: Path, width: int, height: int) -> Path:
    """An 8-bit grey PNG of zeros written row block by row block (never the whole image
    in memory): IHDR, one IDAT streamed from ``zlib.compressobj``, IEND."""
    rows = 1000
    block = bytes((width + 1) * rows)  # each row: filter byte 0, then the pixels
    compressor = zlib.compressobj(1)
    idat = [compressor.compress(block) for _ in range(height // rows)]
    idat += [compressor.compress(bytes((width + 1) * (height % rows))), compressor.flush()]
    path.write_bytes(b"\x89PNG\r\n\x1a\n"
                     + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0,
                                                       0, 0))
                     + _png_chunk(b"IDAT", b"".join(idat)) + _png_chunk(b"IEND", b""))
    return path


def _measured(cwd: Path, *args: str) -> tuple[int, str, str, int]:
    """``bnn ARGS`` in a fresh process: (exit code, stdout, stderr, its peak RSS in
    bytes). ``os.wait4`` reports this one child's peak, where RUSAGE_CHILDREN would
    report the largest of every child this (xdist worker) process ever waited for."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-m", "bnn_cli.cli", *args], cwd=cwd,
                                stdout=out, stderr=err)
        killed = threading.Event()

        def kill() -> None:  # (not proc.kill, whose poll could reap it before wait4)
            killed.set()
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)

        timer = threading.Timer(CLI_TIMEOUT, kill)
        timer.start()
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        finally:
            timer.cancel()
        proc.returncode = code = os.waitstatus_to_exitcode(status)
        assert not killed.is_set(), f"bnn {' '.join(args)} ran past {CLI_TIMEOUT} s"
        out.seek(0)
        err.seek(0)
        unit = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes there, KiB here
        return code, out.read().decode(), err.read().decode(), usage.ru_maxrss * unit


# --- layouts -------------------------------------------------------------------------


def test_class_layout_is_one_train_split_that_slices_into_mixed_classes(
        tmp_path: Path) -> None:
    """``root/<class>/*.png``: one split, "train", whose files are sorted then shuffled
    with ``Random("train")`` (as TFDS's ImageFolder), so that "train[:80%]" and
    "train[80%:]" partition them and each holds several classes. Hidden files and
    folders are no images and no classes."""
    root = _folder(tmp_path / "imgs", {"cat": 9, "dog": 10, "emu": 11})
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    _folder(root / ".thumbnails", {"cat": 2})  # a hidden folder: not a class
    source = data.open_source(DataConfig(dataset=str(root)), None)
    info = source.info

    assert info.kind == "image_folder"
    assert info.class_names == CLASSES and info.num_classes == 3
    assert info.split_sizes == {"train": 30}
    assert info.input_shape == (8, 8, 1) and info.image_sizes == ((8, 8),)
    files = source.files("train")
    paths = [f.path for f in files]
    assert all(Path(p).name != ".DS_Store" and ".thumbnails" not in p for p in paths)
    assert all(CLASSES[f.label] == Path(f.path).parent.name for f in files)
    expected = sorted(str(p) for p in root.resolve().glob("[!.]*/*.png"))
    random.Random("train").shuffle(expected)
    assert paths == expected  # ImageFolder's order, exactly

    head, tail = source.files("train[:80%]"), source.files("train[80%:]")
    assert (len(head), len(tail)) == (24, 6)
    assert info.num_examples("train[:80%]") == 24
    assert {f.path for f in head}.isdisjoint(f.path for f in tail)
    assert sorted(f.path for f in head + tail) == sorted(paths)
    assert len({f.label for f in head}) > 1 and len({f.label for f in tail}) > 1


def test_split_layout_has_a_split_per_folder_and_the_union_of_their_classes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``root/train/<class>``, ``root/test/<class>``: one split per top-level folder
    (hidden ones aside); class names are the sorted union over the splits, so a class
    has one label in every split; ``bnn check --json`` reports them."""
    root = tmp_path / "imgs"
    _folder(root / "train", {"emu": 5, "cat": 4})
    _folder(root / "test", {"dog": 3, "emu": 2}, seed=50)
    (root / "test" / "dog" / ".hidden.png").write_bytes(b"not counted")
    _folder(root / ".git", {"objects": 1})  # hidden: not a split
    source = data.open_source(DataConfig(dataset=str(root)), None)

    assert source.info.split_sizes == {"train": 9, "test": 5}
    assert source.info.class_names == CLASSES
    for split in ("train", "test"):
        files = source.files(split)
        assert all(CLASSES[f.label] == Path(f.path).parent.name for f in files)
        expected = sorted(str(p) for p in (root / split).resolve().glob("*/[!.]*.png"))
        random.Random(split).shuffle(expected)  # each split with its own seed
        assert [f.path for f in files] == expected

    config, _ = _config(tmp_path, "imgs")
    report = _check_json(capsys, config)
    assert report["kind"] == "image_folder" and report["dataset"] == str(root.resolve())
    assert report["classes"] == 3 and report["class_names"] == list(CLASSES)
    assert report["splits"] == {"test": 5, "train": 9}
    assert report["image_sizes"] == [[8, 8]] and report["input_shape"] == [8, 8, 1]
    assert report["skipped"] == []


# --- folders that cannot be used: errors located at data.dataset ------------------------


def _assert_located_error(tmp_path: Path, dataset: str, *fragments: str) -> None:
    """``bnn check`` (a fresh process) exits 2 without a traceback, saying where
    ``data.dataset`` is in the config file and each of ``fragments``."""
    config, where = _config(tmp_path, dataset)
    proc = _bnn(tmp_path, "check", str(config))
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stderr.startswith(f"error: {where}"), proc.stderr
    assert f"{where}12: data.dataset: " in proc.stderr  # (column 12: the value)
    for fragment in fragments:
        assert fragment in proc.stderr, (fragment, proc.stderr)


def test_an_empty_class_folder_is_named(tmp_path: Path) -> None:
    root = _folder(tmp_path / "imgs", {"cat": 2, "dog": 2})
    (root / "emu").mkdir()
    (root / "emu" / ".DS_Store").write_bytes(b"hidden files do not count")
    _assert_located_error(tmp_path, "imgs", f"{root / 'emu'}: the class 'emu' has no files")


def test_a_split_folder_without_class_folders_is_named(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _folder(root / "train", {"cat": 2, "dog": 2})
    (root / "test").mkdir()
    Image.fromarray(_noise(8, 8)).save(root / "test" / "loose.png")  # not in a class
    _assert_located_error(tmp_path, "imgs",
                          f"{root / 'test'}: the split 'test' has no class folders")


def test_a_folder_without_class_folders_is_named(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    root.mkdir()
    for i in range(3):
        Image.fromarray(_noise(8, 8, seed=i)).save(root / f"{i}.png")
    _assert_located_error(tmp_path, "imgs", f"{root}: no class folders",
                          "<class>/<image>")


def test_a_dataset_folder_that_does_not_exist_is_named(tmp_path: Path) -> None:
    _assert_located_error(tmp_path, "./nope", "dataset './nope': no such folder",
                          str(tmp_path / "nope"))


def test_a_split_whose_every_file_is_skipped_is_named(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "imgs"
    _folder(root / "train", {"cat": 2, "dog": 2, "emu": 2})
    (root / "test" / "cat").mkdir(parents=True)
    (root / "test" / "cat" / "a.png").write_text("not a PNG")
    config, where = _config(tmp_path, "imgs")
    code, _, err = _main(capsys, "check", str(config), "data.bad_images=skip")
    assert code == 2
    assert err.startswith(f"error: {where}")
    assert f"{root / 'test'}: the split 'test' has no readable images" in err


# --- untrusted files: refused by name, or skipped and counted ------------------------


def _truncated_jpeg(path: Path) -> None:
    whole = _encoded(_noise(64, 64, 3, seed=1), "JPEG", quality=90)
    path.write_bytes(whole[:len(whole) // 2])


def _truncated_png(path: Path) -> None:
    whole = _encoded(_noise(64, 64, seed=2), "PNG")
    path.write_bytes(whole[:len(whole) // 2])


def _text(path: Path) -> None:
    path.write_text("name,label\nnot an image,1\n")


def _tiff(path: Path) -> None:
    Image.fromarray(_noise(8, 8, seed=3)).save(path, format="TIFF")


def _webp(path: Path) -> None:
    Image.fromarray(_noise(8, 8, 3, seed=4)).save(path, format="WEBP")


BAD_FILES = {  # id: (file name, writer, the reason given)
    "truncated_jpeg": ("cut.jpg", _truncated_jpeg, "truncated JPEG file (its end marker is "
                                                   "missing)"),
    "truncated_png": ("cut.png", _truncated_png, "truncated PNG file (its end marker is "
                                                 "missing)"),
    "text_named_jpg": ("notes.jpg", _text, "not an image (cannot identify image file"),
    "tiff": ("scan.tif", _tiff, "TIFF images are not supported"),
    "webp": ("photo.webp", _webp, "WEBP images are not supported"),
}


@pytest.mark.parametrize("kind", list(BAD_FILES))
def test_an_untrusted_file_is_named_or_skipped_and_counted(
        kind: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``error`` (the default): ``bnn check`` fails naming the file and the reason;
    ``skip``: it passes, lists the file as skipped, and the split counts leave it out."""
    name, write, reason = BAD_FILES[kind]
    root = _folder(tmp_path / "imgs", {"cat": 3, "dog": 3, "emu": 3})
    bad = root.resolve() / "dog" / name
    write(bad)
    assert image_folder.check_file(str(bad), 1, 10**8).reason.startswith(reason)
    config, where = _config(tmp_path, "imgs")

    code, _, err = _main(capsys, "check", str(config))
    assert code == 2
    assert err.startswith(f"error: {where}")
    assert "1 of 10 files cannot be used as images" in err
    assert f"{bad}: {reason}" in err and "data.bad_images: skip" in err

    report = _check_json(capsys, config, "data.bad_images=skip")
    assert len(report["skipped"]) == 1 and report["skipped"][0].startswith(f"{bad}: {reason}")
    assert report["splits"] == {"train": 9}
    assert report["classes"] == 3  # (the other files of its class remain)
    code, out, _ = _main(capsys, "check", str(config), "data.bad_images=skip")
    assert code == 0
    assert "skipped 1 file(s) (data.bad_images: skip):" in out and f"    {bad}: " in out


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """30,000 x 30,000 grey pixels: 900 MB decoded, about 4 MB on disk."""
    path = _black_png(tmp_path_factory.mktemp("huge") / "huge.png", HUGE, HUGE)
    assert path.stat().st_size < 10 * 2**20
    return path


def test_the_png_writer_writes_valid_pngs(tmp_path: Path) -> None:
    """The writer the huge PNG comes from, at a size PIL may decode: CRCs, zlib stream
    and rows all valid, every pixel black (with a partial last block of rows)."""
    with Image.open(_black_png(tmp_path / "small.png", 40, 1500)) as image:
        image.load()
        assert (image.format, image.mode, image.size) == ("PNG", "L", (40, 1500))
        pixels = np.asarray(image)
    assert pixels.shape == (1500, 40) and not pixels.any()


def test_a_huge_png_is_refused_from_its_header_within_a_memory_budget(
        huge_png: Path, tmp_path: Path) -> None:
    """Nothing decodes the 900-megapixel PNG: ``bnn check`` (a fresh process) refuses it
    by name, or skips it, each time in under 2.5 GB of peak memory, less than half the
    decoded image over the same check without it, and in time."""
    root = _folder(tmp_path / "imgs", {"cat": 3, "dog": 3, "emu": 3})
    config, where = _config(tmp_path, "imgs")
    code, _, err, baseline = _measured(tmp_path, "check", str(config))
    assert code == 0, err
    budget = min(MEMORY_BUDGET, baseline + DECODED_MARGIN)
    bad = root.resolve() / "emu" / "huge.png"
    bad.symlink_to(huge_png)  # (a link to a regular file is a file of the folder)

    code, out, err, peak = _measured(tmp_path, "check", str(config))
    assert code == 2, out + err
    assert "Traceback" not in out + err
    assert err.startswith(f"error: {where}") and f"{bad}: " in err
    assert "900,000,000 pixels" in err or "900000000 pixels" in err, err
    assert peak < budget, f"peak RSS {peak / 1e9:.2f} GB (without it {baseline / 1e9:.2f})"

    code, out, err, peak = _measured(tmp_path, "check", str(config), "--json",
                                     "data.bad_images=skip")
    assert code == 0, err
    report = json.loads(out)["data"]
    assert [line.split(": ")[0] for line in report["skipped"]] == [str(bad)]
    assert "pixels" in report["skipped"][0]
    assert report["splits"] == {"train": 9} and report["input_shape"] == [8, 8, 1]
    assert peak < budget, f"peak RSS {peak / 1e9:.2f} GB (without it {baseline / 1e9:.2f})"


def test_max_pixels_is_the_budget_of_pixels(tmp_path: Path) -> None:
    """Under PIL's own limit, ``data.max_pixels`` decides, and says so."""
    path = tmp_path / "big.png"
    Image.fromarray(_noise(20, 30)).save(path)
    checked = image_folder.check_file(str(path), 0, 600)
    assert isinstance(checked, image_folder.ImageFile)
    assert (checked.width, checked.height, checked.grey) == (30, 20, True)
    refused = image_folder.check_file(str(path), 0, 599)
    assert refused.reason == "30x20 is 600 pixels, more than data.max_pixels (599)"


def test_max_pixels_stops_at_pils_own_limit(tmp_path: Path,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    """PIL refuses to open more than 178,956,970 pixels whatever bnn allows, so a larger
    data.max_pixels is a located config error, not a setting without effect."""
    config, _ = _config(tmp_path, "sklearn_digits")
    code, _, err = _main(capsys, "check", str(config),
                         f"data.max_pixels={image_folder.PIL_MAX_PIXELS + 1}")
    assert code == 2 and "data.max_pixels" in err and "178956970" in err.replace(",", "")


def test_a_truncated_gif_is_refused() -> None:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "cut.gif"
        whole = _encoded(_noise(64, 64, 3, seed=5), "GIF")
        path.write_bytes(whole[:len(whole) // 2])
        checked = image_folder.check_file(str(path), 0, 10**8)
    assert isinstance(checked, image_folder.BadFile), checked


def test_a_grey_gif_among_grey_pngs_decodes(tmp_path: Path) -> None:
    """PIL opens a GIF with a grey palette as mode L, but TensorFlow decodes GIFs only to
    RGB: such a GIF makes the folder's images RGB, and every file then decodes."""
    root = _folder(tmp_path / "imgs", {"cat": 2, "dog": 2, "emu": 2})
    # (Not optimized, the palette is PIL's grey ramp, which PIL reads back as mode L.)
    Image.fromarray(_noise(8, 8, seed=6)).save(root / "emu" / "grey.gif", optimize=False)
    with Image.open(root / "emu" / "grey.gif") as image:
        assert image.mode == "L"  # (what makes it a grey image to the checks)
    cfg = DataConfig(dataset=str(root), train_split="train", validation_split=None,
                     test_split="train")
    assert data.dataset_info(cfg, None).input_shape == (8, 8, 3)
    x, y = data.split_examples(cfg, "train", batch_size=4, data_dir=None)
    assert x.shape == (7, 8, 8, 3) and np.bincount(y).tolist() == [2, 2, 3]


# --- training -----------------------------------------------------------------------


def test_training_skips_bad_files_or_never_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``bnn train`` on 30 good images and two bad ones (a truncated JPEG; a PNG over
    ``data.max_pixels``, which TensorFlow would decode, in another size): with ``error``
    it stops before creating a run directory; with ``skip`` it trains one epoch on the
    30 others."""
    root = _folder(tmp_path / "imgs", {"cat": 10, "dog": 10, "emu": 10})
    _truncated_jpeg(root / "cat" / "cut.jpg")
    Image.fromarray(_noise(80, 80)).save(root / "dog" / "big.png")  # 6,400 > 5,000 pixels
    config, where = _config(tmp_path, "imgs")
    runs = tmp_path / "runs"

    code, _, err = _main(capsys, "train", str(config), "data.max_pixels=5000",
                         "--output", str(runs))
    assert code == 2
    assert err.startswith(f"error: {where}") and "2 of 32 files" in err
    assert f"{root.resolve() / 'cat' / 'cut.jpg'}: truncated JPEG" in err
    assert f"{root.resolve() / 'dog' / 'big.png'}: 80x80 is 6,400 pixels" in err
    assert not runs.exists() or not any(runs.iterdir()), list(runs.iterdir())

    code, _, err = _main(capsys, "train", str(config), "data.max_pixels=5000",
                         "data.bad_images=skip", "--output", str(runs))
    assert code == 0, err
    (run,) = [p for p in runs.iterdir() if p.is_dir()]
    record = json.loads((run / "run.json").read_text())
    assert record["status"] == "completed" and record["epochs_done"] == 1
    assert np.isfinite(record["final"]["loss"])
    cfg = DataConfig(dataset=str(root), max_pixels=5000, bad_images="skip",
                     train_split="train", validation_split=None, test_split="train")
    x, y = data.split_examples(cfg, "train", batch_size=8, data_dir=None)
    assert x.shape == (30, 8, 8, 1) and np.bincount(y).tolist() == [10, 10, 10]
