#!/usr/bin/env python
"""Size, latency and agreement of each deployment form, measured in one run: the
quickstart (embedded digits) and Larq's MNIST network (real MNIST in ../shared/tfds),
each trained by `bnn train`, then exported as float32 TFLite, int8 TFLite and LCE and
timed by `bnn benchmark-model` (float32 and int8 in TensorFlow's interpreter, LCE in
LCE's; rounds interleaved with the float32 file, so the ratios are measured together).

    python scripts/export_table.py [--data-dir ../shared/tfds] [--mnist-epochs 2]
        [--threads 1] [--runs 200] [--run quickstart=RUN_DIR] [--output docs/export_table]

Writes OUTPUT.json and OUTPUT.md (the README's table). Needs the [deploy] extra for LCE.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MODELS = {"quickstart": "configs/quickstart.yaml", "larq_mnist": "configs/larq_mnist.yaml"}
FORMS = (("float32", ["--format", "tflite"], "model.tflite"),
         ("int8", ["--format", "tflite", "--int8"], "model-int8.tflite"),
         ("lce", ["--format", "lce"], "model-lce.tflite"))


def bnn(*args: str) -> dict:
    """Run the CLI as a user would; its --json output."""
    out = subprocess.run([sys.executable, "-m", "bnn_cli.cli", *args, "--json"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def train(name: str, data_dir: str, epochs: int | None, out: Path) -> Path:
    args = [f"training.epochs={epochs}"] if epochs else []
    subprocess.run([sys.executable, "-m", "bnn_cli.cli", "train", str(ROOT / MODELS[name]), *args,
                    "--data-dir", data_dir, "--output", str(out)], check=True)
    return max((p for p in out.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)


def measure(run: Path, data_dir: str, threads: int, runs: int) -> list[dict]:
    rows = []
    for form, args, file in FORMS:
        report = bnn("export", str(run), *args, "--data-dir", data_dir)
        bench = bnn("benchmark-model", str(run / "export" / file), "--threads", str(threads),
                    "--runs", str(runs))
        timing = bench["models"][0]
        rows.append({"form": form, "size_bytes": report["size_bytes"],
                     "latency_ms": timing["median_ms"], "p10_ms": timing["p10_ms"],
                     "p90_ms": timing["p90_ms"], "runtime": timing["runtime"],
                     "speedup_vs_float32": bench.get("speedup_vs_float32", 1.0),
                     "top1_agreement": report["top1_agreement"],
                     "max_prob_diff": report["max_prob_diff"],
                     "accuracy": report["accuracy"],
                     "trained_accuracy": report["trained_accuracy"],
                     "examples": report["examples"]})
        print(f"{run.name} {form}: {rows[-1]}", file=sys.stderr)
    return rows


def markdown(results: dict, threads: int) -> str:
    lines = [f"| model | form | size | latency / example ({threads} thread) | vs float32 "
             "(same runtime) | top-1 agreement | test accuracy |",
             "|---|---|---|---|---|---|---|"]
    for name, rows in results.items():
        for r in rows:
            lines.append(
                f"| {name} | {r['form']} ({r['runtime']}) | {r['size_bytes'] / 1024:.0f} KiB "
                f"| {r['latency_ms']:.3f} ms ({r['p10_ms']:.3f}-{r['p90_ms']:.3f}) "
                f"| {r['speedup_vs_float32']:.2f}x | {r['top1_agreement']:.2%} "
                f"| {r['accuracy']:.2%} (trained {r['trained_accuracy']:.2%}) |")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "tfds"))
    parser.add_argument("--mnist-epochs", type=int, default=2,
                        help="epochs for larq_mnist (its config says 6)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR",
                        help="use a trained run instead of training")
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "export_table")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/bnn-export-table"))
    args = parser.parse_args()
    given = dict(item.split("=", 1) for item in args.run)
    results = {}
    for name in MODELS:
        epochs = args.mnist_epochs if name == "larq_mnist" else None
        run = Path(given[name]) if name in given else \
            train(name, args.data_dir, epochs, args.workdir / name)
        results[name] = measure(run, args.data_dir, args.threads, args.runs)
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    args.output.with_suffix(".md").write_text(markdown(results, args.threads))
    print(markdown(results, args.threads))
    return 0


if __name__ == "__main__":
    sys.exit(main())
