#!/usr/bin/env python
"""The accuracy table: each BNN config of the table trained by `bnn train`, next to its
full-precision twin (the same network with every quantizer removed), on the real MNIST and
Fashion-MNIST in ../shared/tfds.

Each run chooses its checkpoint on the validation split held out of the training data
(`train[90%:]`, by `val_accuracy`) and reports that checkpoint's accuracy on `test`, as
`bnn train` writes it into the run's run.json. Writes docs/accuracy_table.md and .json.

    python scripts/accuracy_table.py [--data-dir ../shared/tfds] [--only mnist_bnn]
        [--skip-fp] [--run mnist_bnn=RUN_DIR --run mnist_bnn:fp=RUN_DIR ...]

`--run NAME=RUN_DIR` (NAME:fp for the twin) takes that run from an existing run
directory instead of training it, so the table can be rebuilt without retraining. Each
full run takes about 20 minutes on 2 cores (two per config with the twins): these are
long runs, outside the test suite.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

WARM = ["stages[1].from=best", "stages[1].distill.label_weight=1",
        "stages[2].distill.label_weight=1"]

# name -> config. A multi-stage recipe is one `bnn train` run too; it has no twin (its
# single-stage config's twin is the comparison), and spends that config's epochs.
CONFIGS = {
    "mnist_bnn": {"config": "configs/mnist_bnn.yaml", "dataset": "mnist", "stages": 1},
    "fashion_mnist_bnn": {"config": "configs/fashion_mnist_bnn.yaml",
                          "dataset": "fashion_mnist", "stages": 1},
    "bireal_fashion_two_step": {"config": "configs/recipes/bireal_fashion_two_step.yaml",
                                "dataset": "fashion_mnist", "stages": 2, "twin": False},
    # ReActNet's recipe (real-valued teacher, linear decay, kernel-only weight decay, two
    # steps) against the same network's single stage, in the same 6 epochs.
    "larq_mnist": {"config": "configs/larq_mnist.yaml", "dataset": "mnist", "stages": 1},
    "larq_mnist_reactnet": {"config": "configs/recipes/larq_mnist_reactnet.yaml",
                            "dataset": "mnist", "stages": 3, "twin": False},
    "larq_fashion": {"config": "configs/larq_mnist.yaml", "dataset": "fashion_mnist",
                     "stages": 1, "overrides": ["data.dataset=fashion_mnist"]},
    "larq_fashion_reactnet": {"config": "configs/recipes/larq_fashion_reactnet.yaml",
                              "dataset": "fashion_mnist", "stages": 3, "twin": False},
    # The same with step 1 started from the teacher's weights and the labels kept.
    "larq_mnist_reactnet_warm": {"config": "configs/recipes/larq_mnist_reactnet.yaml",
                                 "dataset": "mnist", "stages": 3, "twin": False,
                                 "overrides": WARM},
    "larq_fashion_reactnet_warm": {"config": "configs/recipes/larq_fashion_reactnet.yaml",
                                   "dataset": "fashion_mnist", "stages": 3,
                                   "twin": False, "overrides": WARM},
}

# The full-precision twin: the same network, recipe and data, with no quantizer (and no
# latent-weight clipping) anywhere. The configs put every quantizer in
# `model.defaults.QuantConv2D`, so these overrides reach every binary layer; a QuantConv2D
# without quantizers is an ordinary convolution. The binary layers pad with +1 (a binary
# activation has no 0); the twin pads with 0, as real-valued convolutions do.
FP_OVERRIDES = [
    "model.defaults.QuantConv2D.input_quantizer=null",
    "model.defaults.QuantConv2D.kernel_quantizer=null",
    "model.defaults.QuantConv2D.kernel_constraint=null",
    "model.defaults.QuantConv2D.pad_values=0.0",
]

WALL_FILE = "process_wall.json"  # written by this script beside run.json


def train(name: str, fp: bool, data_dir: str, out: Path) -> Path:
    """Train one config (or its twin) in a fresh folder under ``out``; its run directory."""
    spec = CONFIGS[name]
    folder = out / (f"{name}-fp" if fp else name)
    folder.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in folder.iterdir()}
    overrides = [*spec.get("overrides", []),
                 *([*FP_OVERRIDES, f"name={name}-fp"] if fp else [])]
    cmd = [sys.executable, "-m", "bnn_cli.cli", "train", str(ROOT / spec["config"]),
           *overrides, "--data-dir", data_dir, "--output", str(folder)]
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    wall = time.perf_counter() - start
    new = [p for p in folder.iterdir() if p.name not in before and not p.name.startswith(".")]
    if len(new) != 1:
        raise SystemExit(f"expected one new run directory in {folder}, found {new}")
    run = new[0]
    (run / WALL_FILE).write_text(json.dumps({"process_seconds": round(wall, 1)}) + "\n")
    return run


def read_run(run: Path) -> dict:
    """The table's numbers from a run directory's run.json and metrics.jsonl."""
    info = json.loads((run / "run.json").read_text())
    if info.get("status") != "completed":
        raise SystemExit(f"{run}: status {info.get('status')!r}, not completed")
    if "test" not in info:
        raise SystemExit(f"{run}: run.json has no test entry")
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines() if x]
    seconds = [r["seconds"] for r in rows]
    wall_file = run / WALL_FILE
    process = json.loads(wall_file.read_text())["process_seconds"] if wall_file.exists() else None
    return {
        "run_dir": str(run),
        "epochs": info["epochs_done"],
        "seconds_per_epoch": round(statistics.median(seconds), 1) if seconds else None,
        "train_seconds": info["wall_time"],          # the training loop (run.json)
        "process_seconds": process,                  # the whole `bnn train`, if timed here
        "best_epoch": info["best"]["epoch"],
        "val_accuracy": info["best"]["val_accuracy"],
        "test_accuracy": info["test"]["metrics"]["accuracy"],
        "test_checkpoint": info["test"]["checkpoint"],
        "selected_on": info["test"]["selected_on"],
    }


def minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min"


def percent(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def _given(name: str) -> str:
    """The overrides a row trains with, as the command line gives them."""
    return "".join(f" `{o}`" for o in CONFIGS[name].get("overrides", []))


def markdown(table: dict) -> str:
    lines = [
        "| config | stages | epochs | wall time | s / epoch | validation accuracy (best) "
        "| test accuracy | full-precision test accuracy |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, row in table.items():
        bnn, fp = row["bnn"], row.get("fp")
        # The process's wall time when this script timed it; else run.json's (the
        # training loop only, marked *).
        wall = minutes(bnn["process_seconds"]) if bnn["process_seconds"] else \
            minutes(bnn["train_seconds"]) + " *"
        lines.append(
            f"| `{CONFIGS[name]['config']}`{_given(name)} | {row['stages']} | {bnn['epochs']} "
            f"| {wall} | {bnn['seconds_per_epoch']} "
            f"| {percent(bnn['val_accuracy'])} (epoch {bnn['best_epoch']}) "
            f"| {percent(bnn['test_accuracy'])} | {percent(fp and fp['test_accuracy'])} |")
    lines += [
        "",
        "Wall time: the whole `bnn train` process (data loading, training, validation every "
        "epoch and the test evaluation) on this machine's 2 CPU cores (* the training loop "
        "only, from run.json, for a run this script did not time); s / epoch: the median "
        "epoch. The checkpoint is chosen on the validation split `train[90%:]`, held out of "
        "training (`train[:90%]`), by `val_accuracy`; the test accuracy is that "
        "checkpoint's, from run.json's `test` entry. The full-precision twin is the same "
        "network and recipe with every quantizer removed (`FP_OVERRIDES` in "
        "scripts/accuracy_table.py).",
    ]
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "tfds"))
    parser.add_argument("--only", action="append", choices=sorted(CONFIGS),
                        help="only this config (repeatable); default: all")
    parser.add_argument("--skip-fp", action="store_true",
                        help="do not train the full-precision twins")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR",
                        help="take NAME (or NAME:fp) from an existing run directory")
    parser.add_argument("--out", default=str(ROOT / "runs" / "accuracy_table"),
                        help="where new run directories go")
    parser.add_argument("--table", default=str(ROOT / "docs" / "accuracy_table"),
                        help="output path without extension (.md and .json are written)")
    args = parser.parse_args()

    given: dict[tuple[str, bool], Path] = {}
    for item in args.run:
        key, sep, path = item.partition("=")
        name, _, kind = key.partition(":")
        if not sep or name not in CONFIGS or kind not in ("", "fp"):
            parser.error(f"--run {item!r}: expected NAME=RUN_DIR or NAME:fp=RUN_DIR with "
                         f"NAME one of {', '.join(CONFIGS)}")
        if not (Path(path) / "run.json").is_file():
            parser.error(f"--run {item!r}: {path} has no run.json")
        given[(name, kind == "fp")] = Path(path)

    names = args.only or list(CONFIGS)
    needs_data = any((n, fp) not in given for n in names
                     for fp in ((False,) if args.skip_fp or not CONFIGS[n].get("twin", True)
                                else (False, True)))
    if needs_data:
        for n in names:
            if not (Path(args.data_dir) / CONFIGS[n]["dataset"]).is_dir():
                print(f"{CONFIGS[n]['dataset']} not found in {args.data_dir}; pass --data-dir",
                      file=sys.stderr)
                return 2

    table_path = Path(args.table)
    json_path = table_path.with_suffix(".json")
    # Keep rows of configs not run this time, so --only updates one row of the table.
    table: dict = json.loads(json_path.read_text()) if json_path.exists() else {}
    table = {k: v for k, v in table.items() if k in CONFIGS}
    out = Path(args.out)
    for name in names:
        row = {"config": CONFIGS[name]["config"], "stages": CONFIGS[name]["stages"]}
        for fp in (False, True):
            if fp and not CONFIGS[name].get("twin", True):
                continue
            if fp and args.skip_fp and (name, True) not in given:
                old = table.get(name, {}).get("fp")
                if old:
                    row["fp"] = old  # keep the twin measured before
                continue
            run = given.get((name, fp)) or train(name, fp, args.data_dir, out)
            row["fp" if fp else "bnn"] = read_run(run)
        table[name] = row
    table = {k: table[k] for k in CONFIGS if k in table}
    table_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(table, indent=2) + "\n")
    table_path.with_suffix(".md").write_text(markdown(table))
    print(markdown(table))
    print(f"wrote {table_path.with_suffix('.md')} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
