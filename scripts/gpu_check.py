#!/usr/bin/env python
"""The GPU check, one prepared run of at most 8 minutes (``scripts/gpu_check.sh``):

- epoch time of the quickstart and of ``configs/mnist_bnn.yaml`` as ``bnn train`` runs
  them, in float32 and in ``mixed_float16`` (the median epoch after the first, from
  metrics.jsonl; 3 epochs each);
- a training step of BinaryNet for CIFAR-10 at batch 256 as bnn, as Larq and in full
  precision (``benchmark.bench_step``: alternating rounds, medians);
- bnn's MNIST input pipeline against the training steps it feeds
  (``benchmark.bench_pipeline``).

Writes ``<out>/gpu_check.md`` (the table the README shows, with the device named) and
``gpu_check.json``. Runs on a CPU too (then the mixed policy is left out, and the table
says which device it ran on): nothing in bnn depends on a GPU.

    python scripts/gpu_check.py [--out gpu_check] [--data-dir ../shared/tfds]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import benchmark

from bnn_cli.assemble import machine

ROOT = benchmark.ROOT
EPOCH_JOBS = {  # name -> config, needs MNIST
    "quickstart": ("configs/quickstart.yaml", False),
    "mnist_bnn": ("configs/mnist_bnn.yaml", True),
}


def device() -> dict[str, Any]:
    """The GPU's name (TensorFlow's device details), or the CPU's."""
    from bnn_cli._keras import tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        details = tf.config.experimental.get_device_details(gpus[0])
        return {"gpu": True, "name": f"{len(gpus)} x {details.get('device_name', 'GPU')}"}
    return {"gpu": False, "name": str(machine.cpu())}


def epoch_seconds(config: str, policy: str | None, data_dir: str, tmp: Path) -> float:
    """The median epoch after the first of a 3-epoch ``bnn train`` (metrics.jsonl)."""
    out = tmp / f"{Path(config).stem}-{policy or 'float32'}"
    cmd = [sys.executable, "-m", "bnn_cli.cli", "train", config, "training.epochs=3",
           f"runtime.mixed_precision={policy or 'null'}", "--output", str(out),
           "--data-dir", data_dir]
    subprocess.run(cmd, check=True, cwd=ROOT, capture_output=True)
    (run,) = [p for p in out.iterdir() if (p / "metrics.jsonl").is_file()]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    return statistics.median(r["seconds"] for r in rows[1:])


def check(data_dir: str) -> dict[str, Any]:
    where = device()
    policies = [None, "mixed_float16"] if where["gpu"] else [None]
    has_mnist = (Path(data_dir) / "mnist").is_dir()
    epochs: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (config, needs_mnist) in EPOCH_JOBS.items():
            if needs_mnist and not has_mnist:
                continue
            epochs[name] = {policy or "float32": epoch_seconds(config, policy, data_dir,
                                                               Path(tmp))
                            for policy in policies}
            benchmark.progress(f"epochs {name}: {epochs[name]}")
    step = benchmark.bench_step(3, batch_size=256, only=("binarynet_cifar10",))
    pipeline = benchmark.bench_pipeline(2, data_dir) if has_mnist else None
    return {"device": where, "epochs": epochs, "step": step, "pipeline": pipeline}


def table(results: dict[str, Any]) -> str:
    lines = [f"Device: {results['device']['name']}.", "",
             "| job | " + " | ".join(f"epoch, {p}" for p in _policies(results)) + " |",
             "|---|" + "---|" * len(_policies(results))]
    for name, by_policy in results["epochs"].items():
        lines.append(f"| `bnn train` {name} | " + " | ".join(
            f"{by_policy[p]:.2f} s" for p in _policies(results)) + " |")
    lines += ["", benchmark.table({"step": results["step"]}).strip()]
    if results["pipeline"]:
        lines += ["", benchmark.table({"pipeline": results["pipeline"]}).strip()]
    return "\n".join(lines) + "\n"


def _policies(results: dict[str, Any]) -> list[str]:
    return ["float32", "mixed_float16"] if results["device"]["gpu"] else ["float32"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="gpu_check")
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "tfds"))
    args = parser.parse_args()
    results = check(args.data_dir)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "gpu_check.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "gpu_check.md").write_text(table(results))
    print(table(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
