#!/usr/bin/env python
"""Training-step throughput, compared in one run: the same network (Larq's MNIST BNN)
as a bnn BNN, as bnn full precision (every quantizer None, i.e. plain Keras numerics),
and as a Larq BNN. Synthetic data, same batch size, warm-up excluded; each variant is
timed in alternating rounds so machine noise hits all of them alike.

    python scripts/bench_train_step.py [--steps 200] [--rounds 3] [--batch 64]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

os.environ["TF_USE_LEGACY_KERAS"] = "1"


def build(kind: str):
    from bnn_cli._keras import keras

    if kind == "larq":
        import larq as lq

        qlayers, sign, clip = lq.layers, lq.quantizers.SteSign, lq.constraints.WeightClip
    else:
        from bnn_cli import constraints, layers, quantizers

        qlayers, sign, clip = layers, quantizers.SteSign, constraints.WeightClip
    binary = kind != "bnn-float"

    def q(**kw):
        if not binary:
            return {"use_bias": False}
        return {"kernel_quantizer": sign(), "kernel_constraint": clip(), "use_bias": False,
                **kw}

    L = keras.layers
    return keras.Sequential([
        keras.Input((28, 28, 1)),
        qlayers.QuantConv2D(32, 3, **q()), L.MaxPooling2D(), L.BatchNormalization(scale=False),
        qlayers.QuantConv2D(64, 3, **q(input_quantizer=sign() if binary else None)),
        L.MaxPooling2D(), L.BatchNormalization(scale=False),
        qlayers.QuantConv2D(64, 3, **q(input_quantizer=sign() if binary else None)),
        L.BatchNormalization(scale=False), L.Flatten(),
        qlayers.QuantDense(64, **q(input_quantizer=sign() if binary else None)),
        L.BatchNormalization(scale=False),
        qlayers.QuantDense(10, **q(input_quantizer=sign() if binary else None)),
        L.BatchNormalization(scale=False), L.Activation("softmax"),
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", help="also write the results here")
    args = parser.parse_args()

    import numpy as np

    from bnn_cli._keras import tf

    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 1, (args.steps * args.batch, 28, 28, 1)).astype("float32")
    y = rng.integers(0, 10, args.steps * args.batch)
    data = tf.data.Dataset.from_tensor_slices((x, y)).batch(args.batch).cache()
    list(data)  # fill the cache: time the model, not the input pipeline
    kinds = ["bnn", "bnn-float", "larq"]
    models = {}
    for kind in kinds:
        model = build(kind)
        model.compile("adam", "sparse_categorical_crossentropy")
        model.fit(data.take(10), verbose=0)  # trace and warm up
        models[kind] = model
    times: dict[str, list[float]] = {k: [] for k in kinds}
    for r in range(args.rounds):
        for kind in kinds:
            start = time.perf_counter()
            models[kind].fit(data, verbose=0)
            times[kind].append(time.perf_counter() - start)
        print(f"round {r + 1}/{args.rounds}: " + "  ".join(
            f"{k} {times[k][-1]:.2f}s" for k in kinds), file=sys.stderr)
    # The fastest round is the least disturbed by the rest of the machine.
    result = {k: {"ms_per_step": 1000 * min(v) / args.steps,
                  "median_ms_per_step": 1000 * statistics.median(v) / args.steps,
                  "steps_per_s": args.steps / min(v)} for k, v in times.items()}
    print(f"{'variant':10s} {'ms/step':>8s} {'median':>8s} {'steps/s':>8s}")
    for k, r in result.items():
        print(f"{k:10s} {r['ms_per_step']:8.2f} {r['median_ms_per_step']:8.2f} "
              f"{r['steps_per_s']:8.1f}")
    ratio = result["larq"]["ms_per_step"] / result["bnn"]["ms_per_step"]
    print(f"bnn vs larq: {ratio:.2f}x the speed; bnn BNN vs full precision: "
          f"{result['bnn-float']['ms_per_step'] / result['bnn']['ms_per_step']:.2f}x")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "result": result}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
