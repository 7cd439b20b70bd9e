"""Train one network on MNIST twice: read from TFDS, and read from a folder of PNG files.

MNIST's splits (from the TFDS data_dir in ../shared/tfds) are written as PNG files by
class, ``<folder>/{train,test}/<digit>/<n>.png``, once (reused if complete). Then
``configs/larq_mnist.yaml`` trains on the whole training split, once with
``data.dataset: mnist`` and once with ``data.dataset: <folder>``, and each run's test
accuracy is printed with their difference. The two read the same examples (PNG is
lossless) in different stored orders, so they agree to within seed-to-seed noise.

    python scripts/folder_vs_tfds.py [--epochs 6] [--folder /tmp/mnist_png]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED_TFDS = ROOT.parent / "shared" / "tfds"
CONFIG = ROOT / "configs" / "larq_mnist.yaml"


def write_mnist_folder(folder: Path, data_dir: Path = SHARED_TFDS,
                       counts: dict[str, int | None] | None = None) -> Path:
    """MNIST's splits as PNG files by class under ``folder`` (written once: a complete
    folder is marked by ``done.json``; a half-written one is replaced)."""
    import tensorflow_datasets as tfds
    from PIL import Image

    import bnn_cli._keras  # noqa: F401 - TensorFlow's settings before TFDS loads it

    counts = counts or {"train": None, "test": None}
    marker = folder / "done.json"
    if marker.exists() and json.loads(marker.read_text()) == {k: v for k, v in counts.items()}:
        return folder
    shutil.rmtree(folder, ignore_errors=True)
    staging = Path(tempfile.mkdtemp(prefix=folder.name + ".", dir=folder.parent))
    for split, n in counts.items():
        ds = tfds.load("mnist", split=split if n is None else f"{split}[:{n}]",
                       data_dir=str(data_dir))
        for i, ex in enumerate(tfds.as_numpy(ds)):
            target = staging / split / str(ex["label"])
            target.mkdir(parents=True, exist_ok=True)
            Image.fromarray(ex["image"][..., 0]).save(target / f"{i:05d}.png")
            if (i + 1) % 10_000 == 0:
                print(f"wrote {i + 1:,} {split} images", file=sys.stderr)
    (staging / "done.json").write_text(json.dumps(counts))
    staging.rename(folder)
    return folder


FULL_PRECISION = [f"model.defaults.{layer}.{quantizer}=null"
                  for layer in ("QuantConv2D", "QuantDense")
                  for quantizer in ("input_quantizer", "kernel_quantizer", "kernel_constraint")]
"""Overrides that make larq_mnist its full-precision twin (the same layers, no quantizers)."""


def test_accuracy(dataset: str, epochs: int, output: Path, name: str, seed: int = 0,
                  binary: bool = True) -> float:
    """Train larq_mnist (or its full-precision twin) on the whole training split of
    ``dataset``, its learning rate decayed to 0 on a cosine; its test accuracy."""
    from bnn_cli import api

    run = api.train(CONFIG, *([] if binary else FULL_PRECISION),
                    f"name={name}", f"data.dataset={dataset}",
                    "data.train_split=train", "data.validation_split=null",
                    f"training.epochs={epochs}", f"training.seed={seed}",
                    "training.learning_rate={type: cosine, initial: 0.002}",
                    output=output, data_dir=str(SHARED_TFDS))
    return run.record.test["metrics"]["accuracy"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--seeds", type=int, default=1, help="runs of each (seeds 0..n-1)")
    parser.add_argument("--full-precision", action="store_true",
                        help="the network's full-precision twin (no quantizers)")
    parser.add_argument("--folder", type=Path,
                        default=Path(tempfile.gettempdir()) / "bnn_mnist_png")
    parser.add_argument("--output", type=Path, default=Path("runs") / "folder_vs_tfds")
    args = parser.parse_args()
    os.environ.setdefault("TFDS_DATA_DIR", str(SHARED_TFDS))
    folder = write_mnist_folder(args.folder)
    results: dict[str, list[float]] = {"tfds": [], "folder": []}
    for seed in range(args.seeds):
        for name, dataset in (("tfds", "mnist"), ("folder", str(folder))):
            results[name].append(test_accuracy(dataset, args.epochs, args.output,
                                               f"{name}-seed{seed}", seed,
                                               binary=not args.full_precision))
    results["difference_points"] = [100 * (f - t) for f, t in
                                    zip(results["folder"], results["tfds"], strict=True)]
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
