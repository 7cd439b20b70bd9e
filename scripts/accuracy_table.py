#!/usr/bin/env python
"""The accuracy table: each BNN config of the table trained by `bnn train`, next to its
full-precision twin (the same network with every quantizer removed), on the real MNIST and
Fashion-MNIST in ../shared/tfds.

Each run chooses its checkpoint on the validation split held out of the training data
(`train[90%:]`, by `val_accuracy`) and reports that checkpoint's accuracy on `test`, as
`bnn train` writes it into the run's run.json. Writes docs/accuracy_table.md and .json.

    python scripts/accuracy_table.py [--data-dir ../shared/tfds] [--only mnist_bnn]
        [--seeds 0 1 2] [--skip-fp] [--run mnist_bnn=RUN_DIR --run mnist_bnn:fp=RUN_DIR ...]

Time to accuracy is given in two more forms beside wall minutes: **reference epochs**, the
wall time over one epoch of the plain Larq + Keras MNIST script measured on the same
machine in the same invocation (before and after the runs, each on quiet cores;
`benchmark.reference_epoch`), and the **training compute**, multiply-accumulates spent
(run.json's `compute`: about 3 x the forward MACs per example, times examples seen;
binary and real-valued apart). With `--seeds`, each seed is its own `bnn train`
(`training.seed=S`) and the row gives their mean, each seed and the spread; the twin
trains with the first seed.

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

import benchmark

from bnn_cli.assemble import machine

ROOT = Path(__file__).resolve().parents[1]

WARM = ["stages[1].from=best", "stages[1].distill.label_weight=1",
        "stages[2].distill.label_weight=1"]

# name -> config. A multi-stage recipe is one `bnn train` run too; it has no twin (its
# single-stage config's twin is the comparison), and spends that config's epochs.
CONFIGS = {
    "mnist_bnn": {"config": "configs/mnist_bnn.yaml", "dataset": "mnist", "stages": 1},
    "fashion_mnist_bnn": {"config": "configs/fashion_mnist_bnn.yaml",
                          "dataset": "fashion_mnist", "stages": 1},
    # Time to accuracy (issue 22): the same accuracy in a fraction of the time.
    "mnist_bnn_fast": {"config": "configs/mnist_bnn_fast.yaml", "dataset": "mnist",
                       "stages": 1},
    "fashion_mnist_bnn_fast": {"config": "configs/fashion_mnist_bnn_fast.yaml",
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

# Written by this script beside run.json: the process's wall time, and the reference
# epoch measured on the same machine the same hour (with that machine's CPU), so that runs
# of one row made on different machines or days each keep their own unit.
WALL_FILE = "process_wall.json"


def train(name: str, fp: bool, data_dir: str, out: Path, seed: int | None = None) -> Path:
    """Train one config (or its twin), with ``seed`` where given, in a fresh folder under
    ``out``; its run directory."""
    spec = CONFIGS[name]
    folder = out / ((f"{name}-fp" if fp else name) + ("" if seed is None else f"-s{seed}"))
    folder.mkdir(parents=True, exist_ok=True)
    before = {p.name for p in folder.iterdir()}
    overrides = [*spec.get("overrides", []),
                 *([*FP_OVERRIDES, f"name={name}-fp"] if fp else []),
                 *([] if seed is None else [f"training.seed={seed}"])]
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
    wall = json.loads(wall_file.read_text()) if wall_file.exists() else {}
    return {
        "run_dir": str(run),
        "epochs": info["epochs_done"],
        "seconds_per_epoch": round(statistics.median(seconds), 1) if seconds else None,
        "train_seconds": info["wall_time"],          # the training loop (run.json)
        "process_seconds": wall.get("process_seconds"),  # the whole `bnn train`, if timed
        "reference_epoch_s": wall.get("reference_epoch_s"),  # its own unit, if it has one
        "cpu": wall.get("cpu") or info.get("runtime", {}).get("cpu"),
        "best_epoch": info["best"]["epoch"],
        "val_accuracy": info["best"]["val_accuracy"],
        "test_accuracy": info["test"]["metrics"]["accuracy"],
        "test_checkpoint": info["test"]["checkpoint"],
        "selected_on": info["test"]["selected_on"],
        "compute": info.get("compute"),  # {examples, training_macs} (older runs: none)
        # validation accuracy against training seconds so far, epoch by epoch
        "curve": [[round(sum(seconds[:i + 1]), 1), r.get("val_accuracy")]
                  for i, r in enumerate(rows)],
    }


def minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min"


def percent(x: float | None) -> str:
    return "—" if x is None else f"{100 * x:.2f} %"


def _given(name: str) -> str:
    """The overrides a row trains with, as the command line gives them."""
    return "".join(f" `{o}`" for o in CONFIGS[name].get("overrides", []))


def wall_seconds(run: dict) -> float:
    """The process's wall time where this script timed it; else run.json's (the training
    loop only)."""
    return run["process_seconds"] or run["train_seconds"]


def accuracy_cell(runs: list[dict]) -> str:
    """One run's test accuracy; of several seeds, the mean, each seed and the spread."""
    acc = [r["test_accuracy"] for r in runs]
    if len(acc) == 1:
        return percent(acc[0])
    each = ", ".join(f"{100 * a:.2f}" for a in acc)
    return (f"**{percent(statistics.fmean(acc))}** mean of {len(acc)} seeds ({each}; spread "
            f"{100 * (max(acc) - min(acc)):.2f})")


def unit(run: dict, reference: float | None) -> float | None:
    """A run's reference epoch: its own where it has one, else the row's."""
    return run.get("reference_epoch_s") or reference


def time_cell(runs: list[dict], reference: float | None) -> str:
    """Mean wall time in reference epochs (the unit measured beside the runs)."""
    if not all(unit(r, reference) for r in runs):
        return "—"
    each = [wall_seconds(r) / unit(r, reference) for r in runs]
    more = f" ({', '.join(f'{e:.1f}' for e in each)})" if len(each) > 1 else ""
    return f"{statistics.fmean(each):.1f}{more}"


def compute_cell(runs: list[dict]) -> str:
    """Mean training multiply-accumulates, binary / real-valued (run.json's compute)."""
    spent = [r["compute"]["training_macs"] for r in runs if r.get("compute")]
    if not spent:
        return "—"
    binary = statistics.fmean([m.get("1", 0) for m in spent])
    real = statistics.fmean([sum(n for bits, n in m.items() if bits != "1") for m in spent])
    return f"{binary:.2e} / {real:.2e}"


def markdown(table: dict) -> str:
    lines = [
        "| config | stages | epochs | wall time | time to accuracy (reference epochs) "
        "| s / epoch | validation accuracy (best) | test accuracy "
        "| full-precision test accuracy | training MACs (binary / real) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    references = set()
    for name, row in table.items():
        bnn, fp = row["bnn"], row.get("fp")
        runs = row.get("seeds") or [bnn]
        wall = minutes(statistics.fmean([wall_seconds(r) for r in runs]))
        if not all(r["process_seconds"] for r in runs):
            wall += " *"
        reference = row.get("reference_epoch_s")
        references |= {f"{unit(r, reference):.1f} s on {r.get('cpu') or row.get('cpu')}"
                       for r in runs if unit(r, reference)}
        lines.append(
            f"| `{CONFIGS[name]['config']}`{_given(name)} | {row['stages']} | {bnn['epochs']} "
            f"| {wall} | {time_cell(runs, reference)} | {bnn['seconds_per_epoch']} "
            f"| {percent(bnn['val_accuracy'])} (epoch {bnn['best_epoch']}) "
            f"| {accuracy_cell(runs)} | {percent(fp and fp['test_accuracy'])} "
            f"| {compute_cell(runs)} |")
    lines += [
        "",
        "Wall time: the whole `bnn train` process (data loading, training, validation every "
        "epoch and the test evaluation) on this machine's 2 CPU cores (* the training loop "
        "only, from run.json, for a run this script did not time); of several seeds, the "
        "mean. Time to accuracy: that wall time in reference epochs, the epoch time of the "
        "plain Larq + Keras MNIST script (Larq's MNIST network, batch 64) measured on the "
        "same machine in the same invocation"
        + (f" ({'; '.join(sorted(references))})" if references else "")
        + ". s / epoch and validation: the first seed's median epoch and best epoch. The "
        "checkpoint is chosen on the validation split `train[90%:]`, held out of "
        "training (`train[:90%]`), by `val_accuracy`; the test accuracy is that "
        "checkpoint's, from run.json's `test` entry. The full-precision twin is the same "
        "network and recipe with every quantizer removed (`FP_OVERRIDES` in "
        "scripts/accuracy_table.py), trained with the first seed. Training MACs: about 3 x "
        "the forward pass's per example, times the examples seen (run.json's `compute`).",
    ]
    return "\n".join(lines) + "\n"


TARGETS = {"mnist": 0.995, "fashion_mnist": 0.93}  # issue 22's test accuracy to reach


def plot(table: dict, path: Path) -> bool:
    """Validation accuracy against reference epochs, each seed of each row that has seeds
    and a reference epoch, with the test accuracy targets; whether there was any."""
    rows = {n: r for n, r in table.items()
            if r.get("seeds") and all(unit(s, r.get("reference_epoch_s")) for s in r["seeds"])}
    if not rows:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows), figsize=(6 * len(rows), 4), squeeze=False)
    for ax, (name, row) in zip(axes[0], rows.items(), strict=True):
        for run in row["seeds"]:
            x = [t / unit(run, row.get("reference_epoch_s")) for t, _ in run["curve"]]
            ax.plot(x, [100 * a for _, a in run["curve"]], marker=".",
                    label=f"seed {run['seed']}: test {100 * run['test_accuracy']:.2f} %")
        target = TARGETS.get(CONFIGS[name]["dataset"])
        if target:
            ax.axhline(100 * target, color="grey", linestyle="--", label="test target")
        ax.axvline(75, color="red", linestyle=":", label="75 reference epochs")
        low = 100 * min(a for run in row["seeds"] for _, a in run["curve"][1:] if a) - 0.5
        ax.set_ylim(max(low, 100 * (target or 0.9) - 3), 100)
        ax.set(title=f"{CONFIGS[name]['config']}", xlabel="training time, reference epochs",
               ylabel="validation accuracy (%)")
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return True


def measure_reference(args: argparse.Namespace) -> float:
    """One measurement of the reference epoch (see benchmark.reference_epoch)."""
    seconds = benchmark.reference_epoch(args.data_dir)
    print(f"reference epoch (plain Larq MNIST script): {seconds:.2f} s", flush=True)
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "tfds"))
    parser.add_argument("--only", action="append", choices=sorted(CONFIGS),
                        help="only this config (repeatable); default: all")
    parser.add_argument("--skip-fp", action="store_true",
                        help="do not train the full-precision twins")
    parser.add_argument("--run", action="append", default=[], metavar="NAME=RUN_DIR",
                        help="take NAME (or NAME:fp) from an existing run directory")
    parser.add_argument("--seeds", type=int, nargs="+", metavar="SEED",
                        help="train each config once per seed (training.seed=SEED)")
    parser.add_argument("--reference-epoch", type=float, metavar="SECONDS",
                        help="the reference epoch's time, instead of measuring it here")
    parser.add_argument("--out", default=str(ROOT / "runs" / "accuracy_table"),
                        help="where new run directories go")
    parser.add_argument("--table", default=str(ROOT / "docs" / "accuracy_table"),
                        help="output path without extension (.md and .json are written)")
    args = parser.parse_args()

    # (NAME, twin?) -> run directories, in seed order (--run may name one several times)
    given: dict[tuple[str, bool], list[Path]] = {}
    for item in args.run:
        key, sep, path = item.partition("=")
        name, _, kind = key.partition(":")
        if not sep or name not in CONFIGS or kind not in ("", "fp"):
            parser.error(f"--run {item!r}: expected NAME=RUN_DIR or NAME:fp=RUN_DIR with "
                         f"NAME one of {', '.join(CONFIGS)}")
        if not (Path(path) / "run.json").is_file():
            parser.error(f"--run {item!r}: {path} has no run.json")
        given.setdefault((name, kind == "fp"), []).append(Path(path))

    names = args.only or list(CONFIGS)
    seeds = args.seeds or [None]
    twins = {n for n in names if CONFIGS[n].get("twin", True)
             and ((n, True) in given or not args.skip_fp)}
    needs_data = any(len(given.get((n, False), [])) < len(seeds) for n in names) or \
        any((n, True) not in given for n in twins)
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
    reference = [] if args.reference_epoch or not needs_data else [measure_reference(args)]
    trained: list[Path] = []  # the run directories trained in this invocation

    def fresh(name: str, fp: bool, seed: int | None) -> Path:
        trained.append(train(name, fp, args.data_dir, out, seed))
        return trained[-1]

    for name in names:
        row = {"config": CONFIGS[name]["config"], "stages": CONFIGS[name]["stages"]}
        ready = given.get((name, False), [])
        runs = [read_run(ready[i] if i < len(ready)
                         else fresh(name, False, seed))
                for i, seed in enumerate(seeds)]
        row["bnn"] = runs[0]
        if args.seeds:
            row["seeds"] = [{**r, "seed": seed} for r, seed in zip(runs, seeds, strict=True)]
        if name in twins:
            twin = given.get((name, True), [None])[0] or \
                fresh(name, True, seeds[0])
            row["fp"] = read_run(twin)
        elif table.get(name, {}).get("fp"):
            row["fp"] = table[name]["fp"]  # keep the twin measured before
        table[name] = row
    if needs_data and not args.reference_epoch:
        reference.append(measure_reference(args))  # the same hour: before and after
    if args.reference_epoch or reference:
        cpu = str(machine.cpu())
        seconds = args.reference_epoch or statistics.median(reference)
        for name in names:
            table[name]["reference_epoch_s"] = seconds
            table[name]["cpu"] = cpu
        for run in trained:  # (each keeps its unit, should its row gain runs from elsewhere)
            wall = json.loads((run / WALL_FILE).read_text())
            (run / WALL_FILE).write_text(json.dumps(
                {**wall, "reference_epoch_s": round(seconds, 2), "cpu": cpu}) + "\n")
    table = {k: table[k] for k in CONFIGS if k in table}
    table_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(table, indent=2) + "\n")
    table_path.with_suffix(".md").write_text(markdown(table))
    if plot(table, table_path.parent / "time_to_accuracy.png"):
        print(f"wrote {table_path.parent / 'time_to_accuracy.png'}")
    print(markdown(table))
    print(f"wrote {table_path.with_suffix('.md')} and {json_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
