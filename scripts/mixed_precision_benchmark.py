#!/usr/bin/env python
"""Mixed precision's effect on training speed, measured in one run: a float CNN and a
BNN (BinaryNet for CIFAR-10, ``configs/binarynet_cifar10.yaml``, and its full-precision
twin: every quantizer and clip removed), each in float32 and in a mixed policy, built and
compiled as ``bnn train`` builds them (``bnn_cli.assemble.mixed_precision``, the config's
optimizer).

On a GPU the mixed policy is ``mixed_float16`` (and with several GPUs every variant runs
on one replica and on all of them, MirroredStrategy, the batch per replica fixed); on a
CPU it is ``mixed_bfloat16`` (fast where the CPU has AVX-512 BF16 or AMX). Synthetic
data; warm-up (tracing) excluded; the variants are timed in alternating rounds, so a
busy machine slows them alike, and medians are reported with each mixed variant's
speed-up over float32 on the same network and replicas.

    python scripts/mixed_precision_benchmark.py [--rounds 5] [--steps 10] [--batch 64]
        [--policy mixed_bfloat16] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "configs" / "binarynet_cifar10.yaml"
FLOAT = [f"model.defaults.{layer}.{arg}=null" for layer in ("QuantConv2D", "QuantDense")
         for arg in ("input_quantizer", "kernel_quantizer", "kernel_constraint")]
NETWORKS = {"float CNN": FLOAT, "BNN": []}


def variants(policy: str, gpus: int) -> list[tuple[str, str, int]]:
    """(network, policy, replicas) for every combination measured."""
    replicas = [1, gpus] if gpus > 1 else [1]
    return [(net, p, r) for net in NETWORKS for r in replicas for p in ("float32", policy)]


def build(network: str, policy: str, replicas: int, batch: int, steps: int):
    """A compiled model and its dataset (the global batch: ``batch`` per replica)."""
    import numpy as np

    from bnn_cli._keras import tf
    from bnn_cli.assemble import mixed_precision as precision
    from bnn_cli.assemble.check import check
    from bnn_cli.assemble.model import build_optimizer

    checked = check(CONFIG, NETWORKS[network], allow_unprepared_data=True)
    training = checked.spec.training
    strategy = tf.distribute.MirroredStrategy([f"/gpu:{i}" for i in range(replicas)]) \
        if replicas > 1 else tf.distribute.get_strategy()
    with strategy.scope():
        model = precision.build_model(checked, None if policy == "float32" else policy)
        model.compile(optimizer=build_optimizer(training, steps), loss=training.loss,
                      metrics=list(training.metrics))
    shape = checked.input_shapes["input"][0]
    rng = np.random.default_rng(0)
    size = batch * replicas * steps
    x = rng.uniform(-1, 1, (size, *shape)).astype(np.float32)
    y = rng.integers(0, 10, size).astype(np.int64)
    ds = tf.data.Dataset.from_tensor_slices((x, y)).batch(batch * replicas).repeat() \
        .prefetch(tf.data.AUTOTUNE)
    return model, ds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=10, help="training steps per round")
    parser.add_argument("--batch", type=int, default=64, help="examples per replica")
    parser.add_argument("--policy", choices=["mixed_float16", "mixed_bfloat16"],
                        help="default: mixed_float16 on a GPU, mixed_bfloat16 on a CPU")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    from bnn_cli._keras import tf

    gpus = len(tf.config.list_physical_devices("GPU"))
    policy = args.policy or ("mixed_float16" if gpus else "mixed_bfloat16")
    device = (tf.config.experimental.get_device_details(
        tf.config.list_physical_devices("GPU")[0]).get("device_name", "GPU")
              if gpus else platform.processor() or platform.machine())
    print(f"device: {device} ({gpus} GPU(s), {os.cpu_count()} CPU cores); batch "
          f"{args.batch} per replica, {args.steps} steps per round, {args.rounds} rounds",
          file=sys.stderr)
    built = {}
    for key in variants(policy, gpus):
        model, ds = build(*key, args.batch, args.steps)
        model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)  # warm-up (traces)
        built[key] = (model, ds)
    times: dict[tuple, list[float]] = {key: [] for key in built}
    for i in range(args.rounds):
        for key, (model, ds) in built.items():
            start = time.perf_counter()
            model.fit(ds, steps_per_epoch=args.steps, epochs=1, verbose=0)
            times[key].append((time.perf_counter() - start) / args.steps)
        print(f"round {i + 1}/{args.rounds} done", file=sys.stderr)

    rows = []
    for (network, pol, replicas), values in times.items():
        step = statistics.median(values)
        base = statistics.median(times[(network, "float32", replicas)])
        rows.append({"network": network, "policy": pol, "replicas": replicas,
                     "ms_per_step": round(step * 1000, 2),
                     "examples_per_s": round(args.batch * replicas / step, 1),
                     "speedup_vs_float32": round(base / step, 3)})
    print("| network | policy | replicas | ms / step (median) | examples / s | "
          "vs float32 |")
    print("|---|---|--:|--:|--:|--:|")
    for r in rows:
        print(f"| {r['network']} | {r['policy']} | {r['replicas']} | {r['ms_per_step']} | "
              f"{r['examples_per_s']} | {r['speedup_vs_float32']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps({"device": device, "gpus": gpus, "batch": args.batch,
                                         "steps": args.steps, "rounds": args.rounds,
                                         "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
