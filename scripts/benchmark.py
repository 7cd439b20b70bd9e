#!/usr/bin/env python
"""bnn's speed, compared in one run with what a user would otherwise run.

    python scripts/benchmark.py [--only step,train,pipeline,startup] [--rounds 3]
        [--data-dir ../shared/tfds] [--imagenet-images 3000] [--out docs/benchmark]

- step: training-step throughput of one network as full-precision Keras layers, as
  Larq layers and as bnn_cli layers (Larq's MNIST network at batch 64, BinaryNet for
  CIFAR-10 at batch 128), on random data, timed in alternating rounds (medians);
  plus bnn_cli with XLA (``jit_compile``) and with ``steps_per_execution``;
- train: ``bnn train`` against the plain Larq + Keras script that does the same
  (NumPy arrays, ``model.fit`` with ``validation_data``, ``ModelCheckpoint``,
  ``CSVLogger``), each in its own process, alternating: the median epoch after the
  first (each from one
  epoch-end line to the next, as the parent reads them) and the peak memory, on
  Larq's MNIST network (real MNIST, validated on the test split) and the quickstart
  (the embedded digits);
- pipeline: one epoch of bnn's input pipeline alone against one epoch of training
  steps on the same batches;
- epoch: where a quickstart epoch's time goes as the training loop runs it (pipelines,
  the fit call, the checkpoint with its pointers and metrics, run.json);
- startup: ``bnn --help``, ``bnn list-quantizers`` and ``import tensorflow``;
- imagenet-pipeline: images per second of bnn's ImageNet input pipeline (random-resized
  crop, flip, normalize; evaluation's centre crop) against the Larq zoo's tf.data
  pipeline and against JPEG decoding alone, on a folder of real photographs at
  ImageNet's size (see scripts/imagenet_pipeline.py), with the CPU it ran on.

Writes ``<out>.md`` (the table the README shows) and ``<out>.json``. Larq is the test
extra (``pip install -e '.[test]'``). Times are ratios measured in one run: the machine
is noisy, so only the ratios mean much.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import imagenet_pipeline

os.environ["TF_USE_LEGACY_KERAS"] = "1"
ROOT = Path(__file__).resolve().parents[1]

NETWORKS = {  # name -> (config, batch size)
    "larq_mnist": ("configs/larq_mnist.yaml", 64),
    "binarynet_cifar10": ("configs/binarynet_cifar10.yaml", 128),
}
SECTIONS = ("step", "train", "pipeline", "epoch", "startup", "imagenet-pipeline")


# ---------------------------------------------------------------------------------------
# One network as Keras, Larq and bnn_cli layers
# ---------------------------------------------------------------------------------------


def bnn_model(config: str, overrides: list[str] | None = None):
    """The network of a config, built by bnn_cli (no dataset needed)."""
    from bnn_cli.assemble.check import check
    from bnn_cli.assemble.model import build_model

    checked = check(ROOT / config, overrides or [], allow_unprepared_data=True)
    return build_model(checked)


def translate(model, target: str):
    """The same Sequential network with Larq's layers ("larq") or plain Keras layers
    without any quantizer ("keras"): each layer rebuilt from its config."""
    from bnn_cli._keras import keras

    if target == "larq":
        import larq as lq
    layers = []
    for layer in model.layers:
        config = layer.get_config()
        name = type(layer).__name__
        if name == "InputLayer":
            continue
        if name.startswith("Quant"):
            quant = {k: config.pop(k) for k in list(config)
                     if k.endswith("_quantizer") or k.endswith("_constraint")
                     and k.startswith("kernel")}
            if target == "keras":
                config.pop("pad_values", None)
                layer_cls = getattr(keras.layers, name[len("Quant"):])
            else:
                layer_cls = getattr(lq.layers, name)
                for key, value in quant.items():  # (bnn_cli's classes have Larq's names)
                    module = lq.constraints if key.endswith("constraint") else lq.quantizers
                    config[key] = None if value is None else \
                        getattr(module, value["class_name"])(**value["config"])
            layers.append(layer_cls.from_config(config))
        else:
            layers.append(type(layer).from_config(config))
    return keras.Sequential([keras.Input(model.input_shape[1:]), *layers])


# ---------------------------------------------------------------------------------------
# step: training-step throughput
# ---------------------------------------------------------------------------------------


def bench_step(rounds: int, batch_size: int | None = None,
               only: tuple[str, ...] | None = None) -> dict[str, Any]:
    """Each of :data:`NETWORKS` (or ``only`` those), at its batch size or ``batch_size``."""
    import numpy as np

    from bnn_cli._keras import tf

    results = {}
    for name, (config, batch) in NETWORKS.items():
        if only and name not in only:
            continue
        batch = batch_size or batch
        model = bnn_model(config)
        steps = 60 if name == "larq_mnist" else 6
        rng = np.random.default_rng(0)
        shape = model.input_shape[1:]
        x = rng.uniform(-1, 1, (steps * batch, *shape)).astype("float32")
        y = rng.integers(0, model.output_shape[-1], steps * batch)
        data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache()
        list(data)  # fill the cache: time the model, not the input pipeline
        variants = {
            "keras (full precision)": (translate(model, "keras"), {}),
            "larq": (translate(model, "larq"), {}),
            "bnn": (model, {}),
            "bnn, jit_compile": (bnn_model(config), {"jit_compile": True}),
            "bnn, steps_per_execution 8": (bnn_model(config), {"steps_per_execution": 8}),
        }
        for m, compile_args in variants.values():
            m.compile("adam", "sparse_categorical_crossentropy", **compile_args)
            m.fit(data.take(3), verbose=0)  # trace and warm up
        times: dict[str, list[float]] = {v: [] for v in variants}
        cpu: dict[str, list[float]] = {v: [] for v in variants}
        for r in range(rounds):
            for variant, (m, _) in variants.items():
                start, start_cpu = time.perf_counter(), time.process_time()
                m.fit(data, verbose=0)
                times[variant].append((time.perf_counter() - start) / steps)
                cpu[variant].append((time.process_time() - start_cpu) / steps)
            progress(f"step {name} round {r + 1}/{rounds}: " + "  ".join(
                f"{v} {1000 * t[-1]:.1f} ms" for v, t in times.items()))
        # Wall time is what a user waits; process CPU time (both cores) is what the step
        # costs, and moves less when the host throttles.
        results[name] = {"batch": batch,
                         "ms_per_step": {v: 1000 * statistics.median(t)
                                         for v, t in times.items()},
                         "cpu_ms_per_step": {v: 1000 * statistics.median(t)
                                             for v, t in cpu.items()}}
    return {"cpu": cpu_info(), "onednn": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
            "networks": results}


# ---------------------------------------------------------------------------------------
# train: `bnn train` against the plain script, end to end
# ---------------------------------------------------------------------------------------

PLAIN_SCRIPT = textwrap.dedent("""
    # What a Larq user writes: NumPy arrays, one model.fit with validation_data,
    # ModelCheckpoint and CSVLogger. The network is the config's, in Larq's layers.
    import os, sys, time
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import numpy as np
    import tensorflow_datasets as tfds
    import tf_keras as keras
    sys.path.insert(0, {scripts!r})
    import bnn_cli.data.digits  # (registers the embedded digits builder with TFDS)
    from benchmark import bnn_model, translate

    config, dataset, train_split, val_split, batch, epochs, lr, data_dir, out = sys.argv[1:]
    def arrays(split):
        ds = tfds.load(dataset, split=split, data_dir=data_dir or None, batch_size=-1,
                       as_supervised=True)
        x, y = tfds.as_numpy(ds)
        return x.astype("float32") / 127.5 - 1, y
    (x, y), (xv, yv) = arrays(train_split), arrays(val_split)
    model = translate(bnn_model(config), "larq")
    model.compile(keras.optimizers.Adam(float(lr)), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])

    class EpochEnd(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            print("EPOCH-END", epoch + 1, flush=True)

    model.fit(x, y, batch_size=int(batch), epochs=int(epochs), validation_data=(xv, yv),
              verbose=0, callbacks=[
                  keras.callbacks.ModelCheckpoint(os.path.join(out, "ckpt.h5")),
                  keras.callbacks.CSVLogger(os.path.join(out, "log.csv")), EpochEnd()])
""")

TRAIN_CASES = {
    # name -> config, dataset, train split, validation split, batch, epochs, lr
    "larq_mnist": ("configs/larq_mnist.yaml", "mnist", "train", "test", 64, 6, 0.001),
    "quickstart": ("configs/quickstart.yaml", "sklearn_digits", "train[:90%]",
                   "train[90%:]", 32, 12, 0.01),
}


def _timed_process(cmd: list[str], marker: str, cwd: str,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``cmd``; the times at which lines containing ``marker`` appeared (either
    stream), and the process's peak memory (its maximum resident set, as GNU time
    reports it: the rusage of a child forked from this large process would count the
    copy of this one it starts as)."""
    timer = shutil.which("time") or "/usr/bin/time"
    proc = subprocess.Popen([timer, "-f", "BENCH_PEAK_KB %M", *cmd], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, cwd=cwd, env=env)
    stamps, lines, peak_kb = [], [], None
    for line in proc.stdout:  # read as they come: each line's time is when it was printed
        lines.append(line)
        if marker in line:
            stamps.append(time.perf_counter())
        if line.startswith("BENCH_PEAK_KB "):
            peak_kb = int(line.split()[1])
    if proc.wait() != 0:
        raise RuntimeError(f"{cmd[:4]} failed:\n{''.join(lines[-20:])}")
    return {"epoch_ends": stamps, "peak_mib": (peak_kb or 0) / 1024}


def bench_train(rounds: int, data_dir: str) -> dict[str, Any]:
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "plain.py"
        script.write_text(PLAIN_SCRIPT.format(scripts=str(ROOT / "scripts")))
        for name, (config, dataset, train, val, batch, epochs, lr) in TRAIN_CASES.items():
            data = "" if dataset == "sklearn_digits" else data_dir
            bnn_cmd = [sys.executable, "-m", "bnn_cli.cli", "train", config,
                       f"data.train_split={train}", f"data.validation_split={val}",
                       f"training.batch_size={batch}", f"training.epochs={epochs}",
                       f"training.learning_rate={lr}",
                       *(["--data-dir", data] if data else [])]
            plain = [sys.executable, str(script), config, dataset, train, val, str(batch),
                     str(epochs), str(lr), data]
            runs: dict[str, list[dict[str, Any]]] = {
                "bnn train": [], "plain script": [], "plain script, oneDNN": []}
            for r in range(rounds):
                out = Path(tmp) / f"{name}-{r}"
                out.mkdir()
                runs["bnn train"].append(_timed_process(
                    [*bnn_cmd, "--output", str(out)], "  loss ", str(ROOT)))
                # The plain script as a user runs it (TensorFlow's defaults for this CPU),
                # and with the oneDNN kernels that bnn turns on: how much of the
                # difference is that default.
                for key, onednn in (("plain script", None), ("plain script, oneDNN", "1")):
                    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
                    env.update({"TF_ENABLE_ONEDNN_OPTS": onednn} if onednn else {})
                    runs[key].append(_timed_process([*plain, str(out)], "EPOCH-END",
                                                    str(ROOT), env=env))
                progress(f"train {name} round {r + 1}/{rounds}: " + "  ".join(
                    f"{k} {_epoch_time(v[-1]):.2f} s" for k, v in runs.items()))
            results[name] = {
                k: {"epoch_s": statistics.median(_epoch_time(x) for x in v),
                    "peak_mib": max(x["peak_mib"] for x in v)} for k, v in runs.items()}
    return results


def busy_share(seconds: float = 2.0, stat: Path = Path("/proc/stat")) -> float:
    """The share of this machine's cores that were not ours to use over ``seconds``:
    other processes' time and the hypervisor's steal (a throttled VM), from ``stat``'s
    first line; 0.0 where it cannot be read. The caller sleeps meanwhile."""

    def sample() -> tuple[int, int] | None:
        try:
            fields = [int(v) for v in stat.read_text().splitlines()[0].split()[1:]]
        except (OSError, ValueError, IndexError):
            return None
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return idle, sum(fields[:8])  # (guest time is counted inside user already)

    first = sample()
    time.sleep(seconds)
    last = sample()
    if first is None or last is None or last[1] <= first[1]:
        return 0.0
    return 1.0 - (last[0] - first[0]) / (last[1] - first[1])


def wait_until_quiet(limit: float = 0.15, patience: float = 600.0,
                     share: Callable[[], float] = busy_share) -> float:
    """Wait, up to ``patience`` seconds, until under ``limit`` of the cores are busy or
    stolen: a time unit measured on shared cores comes out long and flatters every run
    measured in it (the reference epoch moved from 12.6 to 15.6 s within an hour while
    tests shared the cores). The last share seen; past ``patience`` it says so and goes on."""
    deadline = time.monotonic() + patience
    while (busy := share()) >= limit:
        if time.monotonic() >= deadline:
            progress(f"cores still {busy:.0%} busy after {patience:.0f} s: measuring anyway")
            break
        progress(f"waiting for quiet cores ({busy:.0%} busy or stolen)")
    return busy


def reference_epoch(data_dir: str, epochs: int = 4) -> float:
    """The time unit of time to accuracy: one epoch of the plain Larq + Keras MNIST script
    (Larq's MNIST network, batch 64, 60,000 images), the median epoch after the first, as
    a user runs it: with TensorFlow's own defaults for this CPU (bnn's oneDNN default is
    taken out of the environment it inherits), on cores nothing else is using."""
    wait_until_quiet()
    env = {k: v for k, v in os.environ.items() if k != "TF_ENABLE_ONEDNN_OPTS"}
    with tempfile.TemporaryDirectory() as tmp:
        script = Path(tmp) / "plain.py"
        script.write_text(PLAIN_SCRIPT.format(scripts=str(ROOT / "scripts")))
        config, dataset, train, val, batch, _, lr = TRAIN_CASES["larq_mnist"]
        run = _timed_process([sys.executable, str(script), config, dataset, train, val,
                              str(batch), str(epochs), str(lr), data_dir, tmp],
                             "EPOCH-END", str(ROOT), env=env)
    return _epoch_time(run)


def _epoch_time(run: dict[str, Any]) -> float:
    """The median time from one epoch line to the next (the first epoch, which traces
    the step, has no line before it): a throttled or busy moment moves it less than one
    epoch's time."""
    ends = run["epoch_ends"]
    return statistics.median(b - a for a, b in zip(ends, ends[1:], strict=False))


# ---------------------------------------------------------------------------------------
# pipeline: the input pipeline alone against the training steps
# ---------------------------------------------------------------------------------------


def bench_pipeline(rounds: int, data_dir: str) -> dict[str, Any]:
    from bnn_cli.assemble.check import check
    from bnn_cli.assemble.model import build_model
    from bnn_cli.data import pipeline as datamod

    checked = check(ROOT / "configs/larq_mnist.yaml", ["data.train_split=train"],
                    data_dir=data_dir)
    spec = checked.spec

    def epoch(seed: int):
        return datamod.load_split(spec.data, spec.data.train_split, training=True,
                                  batch_size=spec.training.batch_size, seed=seed,
                                  data_dir=checked.data_dir)

    model = build_model(checked)
    model.compile("adam", "sparse_categorical_crossentropy")
    cached = epoch(0).cache()
    model.fit(cached, verbose=0)  # (fills the cache, traces)
    pipe, steps = [], []
    for r in range(rounds):
        start = time.perf_counter()
        for _ in epoch(r + 1):
            pass
        pipe.append(time.perf_counter() - start)
        start = time.perf_counter()
        model.fit(cached, verbose=0)
        steps.append(time.perf_counter() - start)
        progress(f"pipeline round {r + 1}/{rounds}: pipeline {pipe[-1]:.2f} s, "
                 f"steps {steps[-1]:.2f} s")
    return {"pipeline_s": statistics.median(pipe), "steps_s": statistics.median(steps)}


# ---------------------------------------------------------------------------------------
# epoch: where one `bnn train` epoch's time goes, outside the steps
# ---------------------------------------------------------------------------------------


def bench_epoch(rounds: int, data_dir: str) -> dict[str, Any]:
    """A timing breakdown of the quickstart's epochs as the training loop runs them, in
    its one ``fit`` with its own callbacks (milliseconds, medians over the epochs after
    the first): the steps, the validation, the other callbacks' epoch end (TensorBoard),
    and the bookkeeping (checkpoint, pointers, metrics, run.json). Building the stage's
    pipelines, once per stage, is timed too."""
    from bnn_cli._keras import keras
    from bnn_cli.assemble import job as jobs
    from bnn_cli.assemble.check import check
    from bnn_cli.rundir.run import RunDir
    from bnn_cli.training import callbacks, loop
    from bnn_cli.training import state as loopstate

    checked = check(ROOT / "configs/quickstart.yaml", [f"training.epochs={rounds + 1}"],
                    data_dir=data_dir or None)
    marks: list[dict[str, float]] = []

    class Mark(keras.callbacks.Callback):  # (one instance first, one last)
        def __init__(self, first: bool):
            super().__init__()
            self.first = first

        def on_epoch_begin(self, epoch, logs=None):
            if self.first:
                marks.append({"begin": time.perf_counter()})

        def on_test_begin(self, logs=None):
            if self.first:
                marks[-1]["validation"] = time.perf_counter()

        def on_test_end(self, logs=None):
            if self.first:
                marks[-1]["validated"] = time.perf_counter()

        def on_epoch_end(self, epoch, logs=None):
            marks[-1]["end" if self.first else "callbacks"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir.create(tmp, "epoch")
        job = jobs.prepare(checked, run)
        state = loopstate.LoopState(history=[])
        start = time.perf_counter()
        train, val = loop._stage_data(job, state, rounds + 1)
        pipelines = 1000 * (time.perf_counter() - start)
        guard = callbacks.Guard()
        epochs = callbacks.Epochs(job, state, guard)
        tensorboard = keras.callbacks.TensorBoard(str(run.file("tensorboard")),
                                                  write_graph=False, profile_batch=0)

        class Bookkeeping(keras.callbacks.Callback):  # (brackets _Epochs' epoch end)
            def on_epoch_end(self, epoch, logs=None):
                marks[-1]["bookkeeping"] = time.perf_counter()

        job.model.fit(train, validation_data=val, epochs=rounds + 1,
                      steps_per_epoch=job.steps_per_epoch, verbose=0,
                      callbacks=[Mark(True), guard, tensorboard, Bookkeeping(), epochs,
                                 Mark(False)])
        run.unlock()
    parts = {"steps": ("begin", "validation"), "validation": ("validation", "validated"),
             "TensorBoard and the other callbacks": ("validated", "bookkeeping"),
             "checkpoint, pointers, metrics, run.json": ("bookkeeping", "callbacks")}
    timed = marks[1:]  # (the first traces the step)
    result = {name: statistics.median(1000 * (m[b] - m[a]) for m in timed)
              for name, (a, b) in parts.items()}
    return {"stage's pipelines (once)": pipelines, **result}


# ---------------------------------------------------------------------------------------
# startup
# ---------------------------------------------------------------------------------------


def bench_startup(rounds: int) -> dict[str, Any]:
    commands = {
        "bnn --help": [sys.executable, "-m", "bnn_cli.cli", "--help"],
        "bnn list-quantizers": [sys.executable, "-m", "bnn_cli.cli", "list-quantizers"],
        "import tensorflow": [sys.executable, "-c", "import tensorflow"],
    }
    times: dict[str, list[float]] = {k: [] for k in commands}
    for _ in range(rounds):
        for name, cmd in commands.items():
            start = time.perf_counter()
            subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
            times[name].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


# ---------------------------------------------------------------------------------------
# imagenet-pipeline (scripts/imagenet_pipeline.py)
# ---------------------------------------------------------------------------------------


def bench_imagenet_pipeline(rounds: int, images: int) -> dict[str, Any]:
    cpu = cpu_info()
    progress(f"imagenet-pipeline on {imagenet_pipeline.cpu_line(cpu)}")
    return {**imagenet_pipeline.bench(rounds, images, progress=progress), "cpu": cpu}


def cpu_info() -> dict[str, Any]:
    """The CPU's model name, its cores (those this process may use) and the instruction
    sets that matter (bnn_cli.assemble.machine), as JSON."""
    from bnn_cli.assemble import machine

    return dataclasses.asdict(machine.cpu())


# ---------------------------------------------------------------------------------------
# The table
# ---------------------------------------------------------------------------------------


def progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def table(results: dict[str, Any]) -> str:
    out = []
    if "step" in results:
        step = results["step"]
        cpu_line = imagenet_pipeline.cpu_line(step["cpu"])
        out += [f"Training steps on {cpu_line}, TF_ENABLE_ONEDNN_OPTS={step['onednn']}; "
                "speed relative to full-precision Keras and to Larq "
                "(> 1: faster), by wall time and by process CPU time:", "",
                "| network (batch) | variant | ms / step | CPU ms / step "
                "| vs full precision (wall, CPU) | vs Larq (wall, CPU) |",
                "|---|---|---|---|---|---|"]
        for name, r in step["networks"].items():
            ms, cpu = r["ms_per_step"], r["cpu_ms_per_step"]
            for variant, t in ms.items():
                c = cpu[variant]
                fp, lq = "keras (full precision)", "larq"
                out.append(f"| {name} ({r['batch']}) | {variant} | {t:.1f} | {c:.1f} | "
                           f"{ms[fp] / t:.2f}x, {cpu[fp] / c:.2f}x | "
                           f"{ms[lq] / t:.2f}x, {cpu[lq] / c:.2f}x |")
        out.append("")
    if "train" in results:
        out += ["| job | bnn train: epoch | plain script: epoch | speed ratio "
                "(plain / bnn) | plain script with oneDNN: epoch "
                "| peak memory bnn / plain |", "|---|---|---|---|---|---|"]
        for name, r in results["train"].items():
            b, p = r["bnn train"], r["plain script"]
            onednn = r.get("plain script, oneDNN")
            onednn_s = f"{onednn['epoch_s']:.2f} s" if onednn else "—"
            out.append(f"| {name} | {b['epoch_s']:.2f} s | {p['epoch_s']:.2f} s | "
                       f"{p['epoch_s'] / b['epoch_s']:.2f} | {onednn_s} | "
                       f"{b['peak_mib']:.0f} / {p['peak_mib']:.0f} MiB |")
        out.append("")
    if "pipeline" in results:
        r = results["pipeline"]
        out += [f"Input pipeline, one MNIST epoch (batch 64): {r['pipeline_s']:.2f} s, "
                f"against {r['steps_s']:.2f} s of training steps "
                f"({r['steps_s'] / r['pipeline_s']:.1f}x faster than the steps).", ""]
    if "epoch" in results:
        r = results["epoch"]
        out += ["The quickstart's epochs as `bnn train` runs them (median ms): " + ", ".join(
            f"{k} {v:.0f}" for k, v in r.items()) + ".", ""]
    if "startup" in results:
        r = results["startup"]
        out += ["Start-up: " + ", ".join(f"`{k}` {v:.2f} s" for k, v in r.items()) + "."]
    if "imagenet-pipeline" in results:
        out += [""] * bool(out and out[-1]) + \
            imagenet_pipeline.table_lines(results["imagenet-pipeline"])
    return "\n".join(out) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS),
                        help=f"comma-separated sections of {', '.join(SECTIONS)}")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--data-dir", default=str(ROOT.parent / "shared" / "tfds"))
    parser.add_argument("--imagenet-images", type=int, default=imagenet_pipeline.IMAGES,
                        help="imagenet-pipeline: training photographs (validation: "
                             f"up to {imagenet_pipeline.VALIDATION_IMAGES})")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmark"))
    args = parser.parse_args()
    sections = [s for s in args.only.split(",") if s]
    unknown = set(sections) - set(SECTIONS)
    if unknown:
        parser.error(f"unknown sections {sorted(unknown)}; choose from {SECTIONS}")
    results: dict[str, Any] = {}
    for section in sections:
        if section == "step":
            results["step"] = bench_step(args.rounds)
        elif section == "train":
            results["train"] = bench_train(args.rounds, args.data_dir)
        elif section == "pipeline":
            results["pipeline"] = bench_pipeline(args.rounds, args.data_dir)
        elif section == "epoch":
            results["epoch"] = bench_epoch(args.rounds, "")
        elif section == "imagenet-pipeline":
            results[section] = bench_imagenet_pipeline(args.rounds, args.imagenet_images)
        else:
            results["startup"] = bench_startup(args.rounds)
    text = table(results)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".md").write_text(text)
    out.with_suffix(".json").write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
