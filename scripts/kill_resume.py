"""Kill ``bnn train`` with SIGKILL at random moments, resume it, and check nothing was lost.

    python scripts/kill_resume.py --kills 20          # the default
    python scripts/kill_resume.py --kills 5 --seed 1 --kills-per-run 3

First one uninterrupted reference run. Then, until ``--kills`` kills have landed: start a
run, ``kill -9`` it at a random moment, continue it with ``bnn train --resume RUN_DIR``
(or start it again if the kill came before the run directory appeared), kill that
again, ... and finally let a resume finish. A finished run must have every epoch exactly
once in metrics.csv and metrics.jsonl, and its metrics and final weights must equal the
reference's (within ``RTOL``/``ATOL``; with ``training.deterministic`` they are in practice
bit-identical). A kill "survives" when every process after it started without an error
and the run it interrupted ends equal to the reference. Prints
``kills survived X / Y tried`` and timings; exit code 0 only if every kill survived.

The moments are drawn uniformly over a process's life: a quarter of the kills during
start-up (importing TensorFlow, building the model, creating the run directory), the
rest during training (epochs, checkpoint writes, pointer and metrics updates, the final
model save), using the reference run's timings. ``tests/test_faults.py`` imports this
file for its smaller, default-run version of the same check.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "quickstart.yaml"
# Small but real: 4 epochs of 6 steps, a checkpoint after each, deterministic TF ops.
EPOCHS = 4
SETTINGS = [f"training.epochs={EPOCHS}", "training.steps_per_epoch=6", "training.batch_size=16",
            "training.deterministic=true", "data.validation_split=train[95%:]"]
METRICS = ("loss", "accuracy", "val_loss", "val_accuracy", "learning_rate")
RTOL, ATOL = 1e-6, 1e-7  # the stated tolerance (CPU); observed differences are 0
TIMEOUT = 600  # seconds any one process may take before the check calls it a hang


def bnn(*args: str) -> list[str]:
    return [sys.executable, "-m", "bnn_cli.cli", *args]


def run_dirs(output: Path) -> list[Path]:
    """The run directories in ``output`` (hidden ``.incomplete-*`` staging folders aside)."""
    if not output.is_dir():
        return []
    return sorted(p for p in output.iterdir() if p.is_dir() and not p.name.startswith("."))


@dataclass
class Process:
    """A ``bnn`` child process whose stderr lines are collected with their times."""

    proc: subprocess.Popen
    started: float
    lines: list[str] = field(default_factory=list)
    ready: threading.Event = field(default_factory=threading.Event)
    todo: float = 1.0  # the share of the epochs still to train

    @classmethod
    def start(cls, cmd: list[str]) -> Process:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                text=True, cwd=ROOT)
        me = cls(proc, time.perf_counter())
        threading.Thread(target=me._read, daemon=True).start()
        return me

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line)
            # Start-up is over once training begins (a new run or a resumed one).
            if line.startswith(("run directory:", "resuming ")):
                if line.startswith("resuming "):  # "resuming RUN after epoch N"
                    done = int(line.split()[-1])
                    self.todo = (EPOCHS - done) / EPOCHS
                self.ready.set()

    def wait_ready(self) -> None:
        """Until training begins, or the process ends (e.g. with an error) first."""
        deadline = time.perf_counter() + TIMEOUT
        while not self.ready.wait(0.01) and self.proc.poll() is None:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"no training after {TIMEOUT} s:\n{self.stderr}")

    def wait(self, timeout: float | None = TIMEOUT) -> int:
        code = self.proc.wait(timeout=timeout)
        time.sleep(0.05)  # let the reader thread drain the pipe
        return code

    @property
    def stderr(self) -> str:
        return "".join(self.lines)


def reference(output: Path) -> tuple[Path, float, float]:
    """An uninterrupted run: (run dir, start-up seconds, training seconds)."""
    p = Process.start(bnn("train", str(CONFIG), *SETTINGS, "--output", str(output)))
    p.wait_ready()
    ready = time.perf_counter()
    code = p.wait()
    if code != 0:
        raise RuntimeError(f"the reference run failed ({code}):\n{p.stderr}")
    return run_dirs(output)[-1], ready - p.started, time.perf_counter() - ready


@dataclass
class Kill:
    phase: str  # "start-up" or "training"
    after_s: float  # seconds after the process started
    landed: bool  # False: the process had finished before the kill


def kill_at_random(p: Process, rng: random.Random, startup_s: float,
                   train_s: float) -> Kill:
    """SIGKILL ``p`` at a random moment of its start-up or of its training."""
    if rng.random() < 0.25:
        phase, deadline = "start-up", p.started + rng.uniform(0, startup_s)
    else:
        p.wait_ready()
        phase, deadline = "training", time.perf_counter() + rng.uniform(0, train_s * p.todo)
    try:
        p.proc.wait(timeout=max(0.0, deadline - time.perf_counter()))
        return Kill(phase, time.perf_counter() - p.started, landed=False)
    except subprocess.TimeoutExpired:
        p.proc.kill()  # SIGKILL: no handler, no cleanup, no flush
        p.wait()
        return Kill(phase, time.perf_counter() - p.started, landed=True)


def next_command(output: Path) -> list[str]:
    """Resume the run if its directory exists, else start it (a kill came first)."""
    runs = run_dirs(output)
    if runs:
        return bnn("train", str(runs[-1] / "config.yaml"), "--resume", str(runs[-1]))
    return bnn("train", str(CONFIG), *SETTINGS, "--output", str(output))


@dataclass
class Attempt:
    kills: list[Kill]
    run: Path | None
    errors: list[str]
    seconds: float


def interrupted_run(output: Path, kills: int, rng: random.Random, startup_s: float,
                    train_s: float) -> Attempt:
    """Kill a run ``kills`` times at random moments, then let it finish."""
    start = time.perf_counter()
    done: list[Kill] = []
    errors: list[str] = []
    finished = False
    while len(done) < kills and not finished:
        p = Process.start(next_command(output))
        kill = kill_at_random(p, rng, startup_s, train_s)
        if kill.landed:
            done.append(kill)
            continue
        finished = True  # it ended before the kill: that is the end of this run
        if (code := p.wait()) != 0:  # a resume that fails is what must never happen
            errors.append(f"exit {code} after the previous kill:\n{p.stderr[-3000:]}")
    if not finished:
        p = Process.start(next_command(output))
        if (code := p.wait()) != 0:
            errors.append(f"the final resume exited {code}:\n{p.stderr[-3000:]}")
    runs = run_dirs(output)
    return Attempt(done, runs[-1] if runs else None, errors, time.perf_counter() - start)


def read_metrics(run: Path) -> tuple[list[dict], list[dict]]:
    """The rows of metrics.jsonl and of metrics.csv."""
    jsonl = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    with (run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return jsonl, rows


def load_weights(run: Path) -> list:
    from bnn_cli.assemble.vetting import load_vetted_model

    return load_vetted_model(run / "model.keras").get_weights()


def compare(run: Path, ref: Path, *, rtol: float = RTOL, atol: float = ATOL) -> list[str]:
    """What differs between a finished run and the reference (empty: nothing)."""
    import numpy as np

    problems = []
    status = json.loads((run / "run.json").read_text())
    if status.get("status") != "completed":
        problems.append(f"run.json status is {status.get('status')!r}")
    got_jsonl, got_csv = read_metrics(run)
    want, _ = read_metrics(ref)
    epochs = [r["epoch"] for r in want]
    if [r["epoch"] for r in got_jsonl] != epochs:
        problems.append(f"metrics.jsonl epochs {[r['epoch'] for r in got_jsonl]} != {epochs}")
    if [int(r["epoch"]) for r in got_csv] != epochs:
        problems.append(f"metrics.csv epochs {[r['epoch'] for r in got_csv]} != {epochs}")
    for got, row, exp in zip(got_jsonl, got_csv, want, strict=False):
        for key in METRICS:
            if not math.isclose(got[key], exp[key], rel_tol=rtol, abs_tol=atol) or \
                    not math.isclose(float(row[key]), exp[key], rel_tol=rtol, abs_tol=atol):
                problems.append(f"epoch {exp['epoch']} {key}: {got[key]} / {row[key]} (csv) "
                                f"!= {exp[key]}")
    if not problems:
        for i, (a, b) in enumerate(zip(load_weights(run), load_weights(ref), strict=True)):
            if not np.allclose(a, b, rtol=rtol, atol=atol):
                problems.append(f"weight {i} differs by up to {np.max(np.abs(a - b)):.3g}")
    return problems


def kill_trials(work: Path, kills: int, kills_per_run: int, rng: random.Random, ref: Path,
                startup_s: float, train_s: float, log=None) -> tuple[int, int]:
    """Land ``kills`` kills over as many runs as it takes: (kills tried, kills survived)."""
    log = log or (lambda line: print(line, flush=True))
    tried = survived = attempts = 0
    while tried < kills and attempts < 5 * kills:  # (a run can end before a kill lands)
        attempts += 1
        n = min(kills_per_run, kills - tried)
        att = interrupted_run(work / f"run-{attempts:03d}", n, rng, startup_s, train_s)
        problems = att.errors or (compare(att.run, ref) if att.run else ["no run directory"])
        tried += len(att.kills)
        survived += 0 if problems else len(att.kills)
        moments = ", ".join(f"{k.phase} {k.after_s:.1f}s" for k in att.kills) or "none"
        log(f"run {attempts}: {len(att.kills)} kill(s) landed ({moments}); "
            f"{'OK' if not problems else 'FAILED'} in {att.seconds:.0f} s")
        for problem in problems:
            log(f"  {problem}")
    return tried, survived


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=20, help="kills to land (default 20)")
    parser.add_argument("--kills-per-run", type=int, default=3,
                        help="kills before a run may finish (default 3)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    parser.add_argument("--workdir", type=Path, help="keep the runs here (default: a "
                                                     "temporary folder, deleted)")
    args = parser.parse_args(argv)
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    work = args.workdir or Path(tempfile.mkdtemp(prefix="bnn-kill-resume-"))
    # A private TFDS data_dir (the embedded digits are prepared into it once), unless set.
    os.environ.setdefault("TFDS_DATA_DIR", str(work / "tfds"))
    rng = random.Random(args.seed)
    t0 = time.perf_counter()
    try:
        ref, startup_s, train_s = reference(work / "reference")
        print(f"reference run: start-up {startup_s:.1f} s, training {train_s:.1f} s",
              flush=True)
        tried, survived = kill_trials(work, args.kills, args.kills_per_run, rng, ref,
                                      startup_s, train_s)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    total = time.perf_counter() - t0
    print(f"kills survived {survived} / {tried} tried")
    print(f"time: {total:.0f} s in all, {total / max(tried, 1):.1f} s per kill "
          f"(reference run {startup_s + train_s:.0f} s)")
    return 0 if survived == tried else 1


if __name__ == "__main__":
    sys.exit(main())
