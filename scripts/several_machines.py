"""Two hosts on one machine, measured: the README's "Several machines" figures.

1. **A sweep on a database server.** A real PostgreSQL server (started here as the tests
   start it, `tests/machines.py`), and two `bnn sweep` processes started at the same
   moment on one new study, the second under another host name (a UTS namespace of its
   own): which trials each process ran, the wall time, each trial's result.
2. **Training on two workers, each reading its own files.** scikit-learn's digits as a
   TFDS directory whose training split is stored in 8 files, the quickstart network
   trained by one `bnn train` process and by two workers (`multi_worker_mirrored`, a
   `TF_CONFIG` each on localhost ports), each worker with its own copy of the files (as
   each host its own disk): the wall time and the last epoch's metrics of each process.

    python scripts/several_machines.py [--out DIR]

Prints a Markdown table of each part and the CPU it ran on.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "scripts"))

import machines  # noqa: E402

from bnn_cli.assemble import machine  # noqa: E402  (the CPU line every benchmark prints)

QUICKSTART = ROOT / "configs" / "quickstart.yaml"
GRID = ["0.001", "0.003", "0.01", "0.03"]


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "TF_CONFIG"}
    return {**env, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1", **extra}


def sweep(out: Path) -> str:
    """Part 1: two sweeps at once on one PostgreSQL study."""
    import optuna

    with machines.running() as server:
        storage = server.new_database("several_machines")
        other = machines.can_be_another_host()
        args = [f"training.learning_rate.initial={','.join(GRID)}", "--study", "lr"]
        cmds = [[sys.executable, "-m", "bnn_cli.cli", "sweep", str(QUICKSTART), *args,
                 "--output", str(out / f"sweep-{host}")] for host in ("a", "b")]
        if other:
            cmds[1] = machines.as_other_host(cmds[1])
        started = time.perf_counter()
        procs = [subprocess.Popen(c, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                  text=True, env=_env(BNN_SWEEP_STORAGE=storage))
                 for c in cmds]
        errs = [p.communicate()[1] for p in procs]
        wall = time.perf_counter() - started
        for proc, err in zip(procs, errs, strict=True):
            if proc.returncode != 0:
                raise SystemExit(f"a sweep failed:\n{err[-2000:]}")
        study = optuna.load_study(study_name="lr", storage=storage)
        rows = []
        for t in sorted(study.trials, key=lambda t: t.number):
            if t.user_attrs.get("surplus"):
                continue
            run = json.loads((Path(t.user_attrs["run_dir"]) / "run.json").read_text())
            rows.append(f"| {t.number + 1} | {t.params['training.learning_rate.initial']} | "
                        f"{t.user_attrs['owner']['host']} (pid {t.user_attrs['owner']['pid']})"
                        f" | {t.value:.4f} | {run['test']['metrics']['accuracy']:.4f} | "
                        f"{run['wall_time']:.1f} s |")
    hosts = "the second under the host name other-host" if other else "both on this host"
    return "\n".join([
        f"Two `bnn sweep` processes started at once on one new PostgreSQL study ({hosts}): "
        f"{len(rows)} trials in {wall:.1f} s of wall time.", "",
        "| trial | learning rate | run by | best val_accuracy | test accuracy | training |",
        "|--:|--:|---|--:|--:|--:|", *rows])


def _train(args: list[str], **env: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bnn_cli.cli", "train", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=_env(**env))


def _last_epoch(output: str) -> str:
    """The last epoch's metrics line a `bnn train` process printed."""
    lines = [x.strip() for x in output.splitlines() if re.match(r"\s+loss ", x)]
    return re.sub(r"\s+", " ", lines[-1]) if lines else "(none printed)"


def training(out: Path) -> str:
    """Part 2: one process against two workers that each read their own files."""
    copies = [machines.digits_in_files(out / f"host{i}" / "digits" / "1.0.0")
              for i in range(2)]
    common = [str(QUICKSTART), "data.cache=false", "data.train_split=train",
              "data.validation_split=test", "data.test_split=test"]
    started = time.perf_counter()
    one = _train([*common, f"data.dataset={copies[0]}", "--output", str(out / "one")])
    one_out = one.communicate()[0]
    one_wall = time.perf_counter() - started
    ports = machines.free_ports(2)
    started = time.perf_counter()
    procs = [_train([*common, f"data.dataset={copies[i]}", "--output", str(out / "two"),
                     "runtime.strategy=multi_worker_mirrored"],
                    TF_CONFIG=json.dumps({"cluster": {"worker": [f"localhost:{p}"
                                                                 for p in ports]},
                                          "task": {"type": "worker", "index": i}}))
             for i in range(2)]
    outs = [p.communicate()[0] for p in procs]
    two_wall = time.perf_counter() - started
    for proc, text in zip([one, *procs], [one_out, *outs], strict=True):
        if proc.returncode != 0:
            raise SystemExit(f"a training failed:\n{text[-3000:]}")
    tests = [json.loads(next((out / d).iterdir()).joinpath("run.json").read_text())["test"]
             ["metrics"]["accuracy"] for d in ("one", "two")]
    rows = [f"| one process | {one_wall:.1f} s | {_last_epoch(one_out)} | {tests[0]:.4f} |",
            f"| worker 0 (chief) of 2 | {two_wall:.1f} s | {_last_epoch(outs[0])} | "
            f"{tests[1]:.4f} |",
            f"| worker 1 of 2 | {two_wall:.1f} s | {_last_epoch(outs[1])} | |"]
    return "\n".join([
        "`configs/quickstart.yaml` on the digits stored in 8 training files (`data.cache: "
        "false`: read from the files every epoch), one process against two workers, each "
        "reading its own 4 files of its own copy:", "",
        "| process | wall time | last epoch | test accuracy |", "|---|--:|---|--:|", *rows])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="a folder for the runs (default: a temporary one)")
    args = parser.parse_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="several-machines-"))
    out.mkdir(parents=True, exist_ok=True)
    print(str(machine.cpu()), flush=True)
    print(sweep(out), flush=True)
    print()
    print(training(out), flush=True)
    print(f"\n(runs in {out})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
