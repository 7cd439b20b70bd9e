#!/usr/bin/env python
"""Where a training step's time goes, by TensorFlow op type: TensorFlow's profiler over
a few steps of a config's network as bnn trains it and of its full-precision twin (every
quantizer and clip removed, zero padding), on random data.

    python scripts/profile_step.py [--config configs/mnist_bnn_fast.yaml] [--batch 128]
        [--steps 10] [--top 15] [--rounds 3]

Prints, per op type, the milliseconds a step spends in it (summed over the ops the
profiler saw on TensorFlow's executor threads: ops that run at once both count) and how
many such ops a step runs, for both networks side by side; the quantizers' elementwise
work (Sign, Select, Abs, ...) and the copies (Pad, Slice, ...) show up as their own rows.
With ``--rounds N`` it first times both networks' whole steps without the profiler, in
process CPU time, alternating, N rounds of at least 40 steps (the README's bnn vs
full-precision ratio for this config); ``--parts`` adds the BNN without each of the
twin's changes alone (its input quantizers, its kernel quantizers, its clip, its padding
with ones), so each part's share of the difference shows.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from pathlib import Path

import benchmark
from accuracy_table import FP_OVERRIDES

from bnn_cli.assemble import machine


def compiled_with_data(model, batch: int, steps: int):
    """Compile ``model`` and warm it up; ``steps`` batches of cached random data."""
    import numpy as np

    from bnn_cli._keras import tf

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (batch * steps, *model.input_shape[1:])).astype("float32")
    y = rng.integers(0, model.output_shape[-1], batch * steps)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch).cache()
    list(data)
    model.compile("adam", "sparse_categorical_crossentropy")
    model.fit(data.take(2), verbose=0)  # trace and warm up
    return data


def cpu_ms_per_step(models: dict, batch: int, steps: int, rounds: int) -> dict[str, float]:
    """Median process CPU milliseconds per step, the models timed in alternation (CPU
    time: it moves less than wall time when the host throttles)."""
    data = {name: compiled_with_data(m, batch, steps) for name, m in models.items()}
    times: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, m in models.items():
            start = time.process_time()
            m.fit(data[name], verbose=0)
            times[name].append(1000 * (time.process_time() - start) / steps)
    return {name: statistics.median(t) for name, t in times.items()}


def profile(model, batch: int, steps: int) -> tuple[dict[str, float], dict[str, int]]:
    """Milliseconds per step and ops per step, by op type."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    from bnn_cli._keras import tf

    data = compiled_with_data(model, batch, steps)
    with tempfile.TemporaryDirectory() as logdir:
        tf.profiler.experimental.start(logdir)
        model.fit(data, verbose=0)
        tf.profiler.experimental.stop()
        (path,) = Path(logdir).rglob("*.xplane.pb")
        space = xplane_pb2.XSpace.FromString(path.read_bytes())
    ms: dict[str, float] = collections.defaultdict(float)
    count: dict[str, int] = collections.defaultdict(int)
    for plane in space.planes:
        if not plane.name.startswith("/host:CPU"):
            continue
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            if not line.name.startswith("tf_Compute"):  # (the executor's threads)
                continue
            for event in line.events:
                name = names.get(event.metadata_id, "")
                if ":" not in name or "::" in name:  # ops are "scope/name:Type"
                    continue
                kind = name.rsplit(":", 1)[-1]
                ms[kind] += event.duration_ps / 1e9 / steps
                count[kind] += 1
    return dict(ms), {k: round(v / steps) for k, v in count.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="configs/mnist_bnn_fast.yaml")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--rounds", type=int, default=0,
                        help="also time both networks' steps in CPU time, alternating, "
                             "this many rounds (no profiler)")
    parser.add_argument("--parts", action="store_true",
                        help="with --rounds: also the BNN without each part the twin drops")
    args = parser.parse_args()
    cpu = str(machine.cpu())
    if args.rounds:
        variants = {"bnn": [], "fp": FP_OVERRIDES}
        if args.parts:  # (one twin override alone: model.defaults.QuantConv2D.KEY=...)
            variants |= {"without " + o.split("=")[0].rsplit(".", 1)[-1]: [o]
                         for o in FP_OVERRIDES}
        ms = cpu_ms_per_step({name: benchmark.bnn_model(args.config, overrides)
                              for name, overrides in variants.items()},
                             args.batch, max(args.steps, 40), args.rounds)
        print(f"CPU ms per step (median of {args.rounds} rounds): bnn {ms['bnn']:.1f}, "
              f"full precision {ms['fp']:.1f}, bnn vs full precision "
              f"{ms['fp'] / ms['bnn']:.2f}x")
        gap = ms["bnn"] - ms["fp"]
        for name in list(ms)[2:]:
            share = f" ({(ms['bnn'] - ms[name]) / gap:.0%} of the difference)" if gap else ""
            print(f"  bnn {name}: {ms[name]:.1f}, {ms['fp'] / ms[name]:.2f}x{share}")
        print()
    bnn = profile(benchmark.bnn_model(args.config), args.batch, args.steps)
    fp = profile(benchmark.bnn_model(args.config, FP_OVERRIDES), args.batch, args.steps)
    kinds = sorted(set(bnn[0]) | set(fp[0]), key=lambda k: -max(bnn[0].get(k, 0),
                                                                  fp[0].get(k, 0)))
    print(f"{args.config}, batch {args.batch}, {args.steps} steps, on {cpu}\n")
    print("| op type | bnn: ms / step | ops / step | full precision: ms / step | ops / step |")
    print("|---|---|---|---|---|")
    for kind in kinds[:args.top]:
        print(f"| {kind} | {bnn[0].get(kind, 0):.1f} | {bnn[1].get(kind, 0)} "
              f"| {fp[0].get(kind, 0):.1f} | {fp[1].get(kind, 0)} |")
    print(f"| all ops | {sum(bnn[0].values()):.1f} | {sum(bnn[1].values())} "
          f"| {sum(fp[0].values()):.1f} | {sum(fp[1].values())} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
