"""A folder of images by class as a dataset: the layout of TFDS's ``ImageFolder``.

Two layouts, told apart by a ``train`` folder at the top::

    root/train/<class>/*.jpg         root/<class>/*.png
    root/validation/<class>/...      (one split, "train": slice it,
    root/test/<class>/...             e.g. "train[:80%]", "train[80%:90%]")

As in ``ImageFolder``: every top-level folder of the first layout is a split, class
names are the sorted folder names (their union over the splits), and each split's files
are sorted, then shuffled with ``random.Random(split_name)``, so that TFDS-style slices
(``tfds.core.ReadInstruction``) mix the classes. Unlike ``ImageFolder``, slices work,
every file is looked at (not only ``.jpg``/``.jpeg``/``.png``), and files are untrusted:
each one's header is read (PIL, no decoding) and its end checked before anything is
decoded, so a file that is not an image, is truncated, is in a format TensorFlow does
not decode, or claims more pixels than the budget is an error naming it, or with
``bad_images: skip`` is left out and counted. Hidden files (``.DS_Store``) are ignored.
"""

from __future__ import annotations

import os
import random
import re
import sys
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from bnn_cli.errors import UserError, listed

SPLIT_LAYOUT_MARKER = "train"
DECODABLE = {"JPEG": "jpeg", "PNG": "png", "GIF": "gif", "BMP": "bmp"}
"""PIL's names of the formats ``tf.io.decode_image`` reads."""
GREY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
PIL_MAX_PIXELS = 2 * Image.MAX_IMAGE_PIXELS
"""PIL refuses to open an image of more pixels (a decompression bomb) at all."""

# Between PIL's warning and its refusal, data.max_pixels decides (set once, here: the
# warnings filters are process-wide, and catch_warnings is not thread-safe).
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


@dataclass(frozen=True)
class ImageFile:
    """One file's header, as read without decoding."""

    path: str
    label: int
    width: int
    height: int
    grey: bool
    bytes: int


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str


@dataclass(frozen=True)
class Folder:
    """The scanned folder: its splits (files in their fixed order) and class names."""

    root: str
    classes: tuple[str, ...]
    splits: dict[str, tuple[ImageFile, ...]]
    bad: tuple[BadFile, ...]  # left out (bad_images: skip)

    @property
    def channels(self) -> int:
        """1 where every image is grey, else 3 (grey ones are then decoded as RGB)."""
        return 1 if all(f.grey for files in self.splits.values() for f in files) else 3

    def sizes(self, limit: int = 5) -> list[tuple[int, int]]:
        """The most common image sizes (height, width)."""
        counts = Counter((f.height, f.width) for files in self.splits.values() for f in files)
        return [size for size, _ in counts.most_common(limit)]

    def common_size(self) -> tuple[int, int] | None:
        """(height, width) when every image has it, else None."""
        sizes = {(f.height, f.width) for files in self.splits.values() for f in files}
        return next(iter(sizes)) if len(sizes) == 1 else None


def is_image_folder(path: Path) -> bool:
    """A folder of class folders, or of split folders of class folders."""
    return path.is_dir() and not (path / "dataset_info.json").exists()


def scan(root: Path, *, max_pixels: int, skip_bad: bool) -> Folder:
    """List and check every file under ``root``; a UserError for an unusable folder."""
    layout = _layout(root)
    classes = sorted({c for _, folders in layout.values() for c in folders})
    index = {name: i for i, name in enumerate(classes)}
    listed = {split: [(p, index[c]) for c, paths in folders.items() for p in paths]
              for split, (_, folders) in layout.items()}
    total = sum(len(files) for files in listed.values())
    checked = _check_all([f for files in listed.values() for f in files], max_pixels, total)
    bad = [result for result in checked.values() if isinstance(result, BadFile)]
    if bad and not skip_bad:
        raise UserError(_bad_files_message(root, bad, total))
    splits = {split: tuple(_ordered(split, [checked[p] for p, _ in files
                                            if isinstance(checked[p], ImageFile)]))
              for split, files in listed.items()}
    for split, files in splits.items():
        if not files:
            raise UserError(f"{layout[split][0]}: the split {split!r} has no readable images")
    return Folder(str(root), tuple(classes), splits, tuple(bad))


def _layout(root: Path) -> dict[str, tuple[Path, dict[str, list[str]]]]:
    """split -> (its folder, class -> sorted file paths); UserErrors for empty classes
    and splits."""
    if not root.is_dir():
        raise UserError(f"{root}: no such folder")
    top = _subfolders(root)
    if not top:
        raise UserError(f"{root}: no class folders; lay images out as <class>/<image> (one "
                        "split, 'train') or train/<class>/<image> (with validation/ and "
                        "test/ beside train/)")
    split_dirs = {name: root / name for name in top} if SPLIT_LAYOUT_MARKER in top \
        else {SPLIT_LAYOUT_MARKER: root}
    layout = {}
    for split, folder in split_dirs.items():
        classes = {c: _files(folder / c) for c in _subfolders(folder)}
        if not classes:
            raise UserError(f"{folder}: the split {split!r} has no class folders")
        for name, files in classes.items():
            if not files:
                raise UserError(f"{folder / name}: the class {name!r} has no files; "
                                "remove the empty folder or add its images")
        layout[split] = (folder, classes)
    return layout


def _subfolders(folder: Path) -> list[str]:
    return sorted(e.name for e in os.scandir(folder) if e.is_dir() and not _hidden(e.name))


def _files(folder: Path) -> list[str]:
    return sorted(e.path for e in os.scandir(folder)
                  if e.is_file() and not _hidden(e.name))


def _hidden(name: str) -> bool:
    return name.startswith(".")


def _ordered(split: str, files: list[ImageFile]) -> list[ImageFile]:
    """ImageFolder's order: sorted by path, then shuffled by ``Random(split)``."""
    files = sorted(files, key=lambda f: f.path)
    random.Random(split).shuffle(files)
    return files


def _check_all(files: list[tuple[str, int]], max_pixels: int, total: int
               ) -> dict[str, ImageFile | BadFile]:
    """Each file's header, read in threads (it is I/O); progress on long scans."""
    results: dict[str, ImageFile | BadFile] = {}
    with ThreadPoolExecutor(max_workers=8) as pool:
        for i, result in enumerate(pool.map(lambda f: check_file(*f, max_pixels), files)):
            results[result.path] = result
            if (i + 1) % 20_000 == 0:
                sys.stderr.write(f"checked {i + 1:,} of {total:,} image files\n")
    return results


def check_file(path: str, label: int, max_pixels: int) -> ImageFile | BadFile:
    """One file's header and end, without decoding its pixels."""
    try:
        with Image.open(path) as image:
            kind, (width, height), mode = image.format, image.size, image.mode
    except Image.DecompressionBombError as exc:  # PIL: "Image size (N pixels) exceeds..."
        claimed = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"{int(claimed.group(1)):,} pixels" if claimed else "too many pixels"
        return BadFile(path, f"claims {size}, more than data.max_pixels and more than PIL "
                             f"opens at all ({PIL_MAX_PIXELS:,})")
    except (OSError, ValueError, SyntaxError) as exc:  # PIL's ways to say "not an image"
        return BadFile(path, f"not an image ({exc})" if str(exc) else "not an image")
    if kind not in DECODABLE:
        return BadFile(path, f"{kind} images are not supported (TensorFlow decodes "
                             f"{', '.join(DECODABLE)})")
    if width * height > max_pixels:
        return BadFile(path, f"{width}x{height} is {width * height:,} pixels, more than "
                             f"data.max_pixels ({max_pixels:,})")
    size = os.path.getsize(path)
    if not _complete(path, DECODABLE[kind], size):
        return BadFile(path, f"truncated {kind} file (its end marker is missing)")
    return ImageFile(path, label, width, height, mode in GREY_MODES and kind != "GIF", size)


_END_MARKERS = {"jpeg": b"\xff\xd9", "png": b"IEND"}


def _complete(path: str, kind: str, size: int) -> bool:
    """Whether the file ends as a whole file of its format ends (a cheap test that
    catches the truncated downloads and copies that otherwise fail mid-epoch)."""
    with open(path, "rb") as f:
        if kind == "bmp":
            declared = int.from_bytes(f.read(6)[2:6], "little")
            return size >= declared
        f.seek(max(0, size - 1024))
        tail = f.read()
    if kind == "gif":  # its last byte is the trailer, ";" (0x3b), which its data holds too
        return tail.rstrip(b"\x00").endswith(b"\x3b")
    # Some cameras and editors write padding after the end marker: look near the end.
    return _END_MARKERS[kind] in tail


def _bad_files_message(root: Path, bad: list[BadFile], total: int) -> str:
    shown = listed([f"{b.path}: {b.reason}" for b in bad], sep="; ")
    return (f"{root}: {len(bad)} of {total} files cannot be used as images: {shown}. "
            "Remove or replace them, or set data.bad_images: skip to leave them out "
            "(they are counted and reported)")
