"""Mixed precision (runtime.mixed_precision): quantizers against float32, float32 latent
weights and outputs, loss scaling with Bop and the case optimizer, exact resume."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from conftest import QUICKSTART, train_tiny

from bnn_cli import quantizers
from bnn_cli._keras import keras, tf
from bnn_cli.assemble import machine
from bnn_cli.assemble import mixed_precision as precision
from bnn_cli.registry import REGISTRY, load_builtins

POLICIES = {"mixed_float16": tf.float16, "mixed_bfloat16": tf.bfloat16}
EPS = {tf.float16: 2.0 ** -10, tf.bfloat16: 2.0 ** -7}  # each type's relative step
# Quantizers whose values come from a fixed set: exactly the float32 values.
EXACT = {"ste_sign": {-1, 1}, "approx_sign": {-1, 1}, "swish_sign": {-1, 1},
         "ste_heaviside": {0, 1}, "ste_tern": {-1, 0, 1}, "dorefa_quantizer": None}
# Values scaled by a mean of the input (computed in the low type): within its precision.
SCALED = ["magnitude_aware_sign", "magnitude_aware_sign_unclipped", "xnor_weight_scale"]

load_builtins()


def _values_and_gradients(name: str, x: tf.Tensor, policy: str | None):
    with precision.policy(policy):
        quantizer = quantizers.get(name)  # (a Keras layer: its compute type is the policy's)
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = quantizer(x)
    return y, tape.gradient(y, x)


@pytest.mark.parametrize("policy", POLICIES)
@pytest.mark.parametrize("name", [*EXACT, *SCALED])
def test_quantizers_match_float32(policy, name):
    """The same inputs (representable in the low type) through the quantizer in the low
    type and in float32: sign-like values identical and exactly ±1 (0/1, -1/0/1),
    DoReFa's levels the float32 levels rounded to the type, pseudo-gradients equal
    within the type's precision."""
    assert name in REGISTRY.names("quantizer")
    low = POLICIES[policy]
    rng = np.random.default_rng(0)
    x = tf.cast(rng.uniform(-2.5, 2.5, (4, 3, 3, 16)).astype(np.float32), low)
    y_low, g_low = _values_and_gradients(name, x, policy)
    y_ref, g_ref = _values_and_gradients(name, tf.cast(x, tf.float32), None)
    assert y_low.dtype == low and g_low.dtype == low
    y_low, g_low = (tf.cast(t, tf.float32).numpy() for t in (y_low, g_low))
    y_ref, g_ref = y_ref.numpy(), g_ref.numpy()
    if name in EXACT:
        expected = tf.cast(tf.cast(y_ref, low), tf.float32).numpy()
        np.testing.assert_array_equal(y_low, expected)
        if EXACT[name] is not None:
            assert set(np.unique(y_low)) <= EXACT[name]
    else:
        np.testing.assert_allclose(y_low, y_ref, rtol=2 * EPS[low])
    tolerance = 4 * EPS[low] * max(1.0, float(np.abs(g_ref).max()))
    np.testing.assert_allclose(g_low, g_ref, atol=tolerance, rtol=0)


def _model(policy: str | None) -> keras.Model:
    from bnn_cli.assemble.check import check

    return precision.build_model(check(QUICKSTART, []), policy)


@pytest.mark.parametrize("policy", POLICIES)
def test_latent_weights_stay_float32_and_the_output_is_float32(policy):
    model = _model(policy)
    assert keras.mixed_precision.global_policy().name == "float32"  # (restored)
    assert {v.dtype for v in model.variables} == {tf.float32}
    assert model.layers[-1].dtype_policy.name == "float32"  # the final softmax
    assert model.output.dtype == tf.float32
    conv = next(layer for layer in model.layers if layer.name.startswith("quant_conv2d_1"))
    assert conv.dtype_policy.name == policy and conv.output.dtype == POLICIES[policy]
    # The binary kernel the layer computes with: exactly ±1 in the low type.
    kernel = conv.kernel_quantizer(tf.cast(conv.kernel, POLICIES[policy]))
    assert kernel.dtype == POLICIES[policy]
    assert set(np.unique(tf.cast(kernel, tf.float32).numpy())) == {-1.0, 1.0}
    x = np.random.default_rng(0).uniform(-1, 1, (8, 8, 8, 1)).astype(np.float32)
    probs = model(x, training=True).numpy()  # (batch norm on batch statistics)
    assert np.isfinite(probs).all() and np.allclose(probs.sum(axis=1), 1, atol=1e-5)


CASE_BOP = "training.optimizer={type: case, binary: {type: Bop}, default: {type: Adam}}"


def _checkpoint_variables(run) -> dict[str, np.ndarray]:
    from bnn_cli.rundir.run import RunDir

    reader = tf.train.load_checkpoint(RunDir(run).load_checkpoint("last").prefix)
    return {n: reader.get_tensor(n) for n in reader.get_variable_to_shape_map()
            if not n.startswith("_CHECKPOINTABLE")}


@pytest.mark.parametrize("policy", POLICIES)
def test_bnn_trains_in_mixed_precision(tmp_path, policy):
    """The quickstart (batch norm after every layer) trains with Bop and Adam through
    the case optimizer; mixed_float16 scales the loss, and the loss scale is saved."""
    run = train_tiny(tmp_path, f"runtime.mixed_precision={policy}", CASE_BOP)
    status = json.loads((run / "run.json").read_text())
    assert status["runtime"]["mixed_precision"] == policy
    assert all(np.isfinite(v) for v in status["final"].values() if isinstance(v, float))
    variables = _checkpoint_variables(run)
    floats = {n: v for n, v in variables.items() if v.dtype.kind == "f"}
    assert {v.dtype for v in floats.values()} == {np.dtype("float32")}
    assert all(np.isfinite(v).all() for v in floats.values())
    scaled = [n for n in variables if "loss_scale" in n]
    assert bool(scaled) == (policy == "mixed_float16"), scaled
    assert keras.mixed_precision.global_policy().name == "float32"
    # Evaluated and exported in float32 (its weights are float32; LCE takes no other).
    from bnn_cli.deploy.targets import TargetOptions, resolve

    job = resolve(run, TargetOptions()).job
    assert {layer.dtype_policy.name for layer in job.model.layers} == {"float32"}


@pytest.mark.slow
def test_mixed_float16_resumes_exactly(tmp_path):
    """Killed after epoch 1 (simulated) and resumed, a mixed_float16 run with Bop ends
    with the uninterrupted run's metrics: the loss scale is restored with the optimizer."""
    from bnn_cli.cli import main

    # The simulated stop keeps epoch 1's checkpoint, which a run keeps only as its best:
    # with the learning rate (cosine, falling) as the monitor, epoch 1 is the best.
    extra = ["runtime.mixed_precision=mixed_float16", CASE_BOP, "training.epochs=2",
             "training.monitor=learning_rate", "training.monitor_mode=max"]
    whole = train_tiny(tmp_path / "a", *extra)
    assert json.loads((whole / "run.json").read_text())["best"]["epoch"] == 1
    assert json.loads((whole / "checkpoints" / "best.json").read_text()) == \
        {"checkpoint": "epoch-0001"}
    run = tmp_path / "b" / whole.name
    shutil.copytree(whole, run)
    shutil.rmtree(run / "checkpoints" / "epoch-0002")
    (run / "checkpoints" / "last.json").write_text('{"checkpoint": "epoch-0001"}')
    (run / "model.keras").unlink()
    status = json.loads((run / "run.json").read_text())
    del status["test"]
    (run / "run.json").write_text(json.dumps({**status, "status": "interrupted",
                                              "epochs_done": 1}))
    assert main(["train", "--resume", str(run)]) == 0
    a, b = (json.loads((r / "run.json").read_text()) for r in (whole, run))
    assert b["status"] == "completed"
    for key, value in a["final"].items():
        if key != "seconds":
            assert b["final"][key] == pytest.approx(value, rel=1e-6), key
    for name, value in _checkpoint_variables(whole).items():
        np.testing.assert_array_equal(_checkpoint_variables(run)[name], value, err_msg=name)
    assert main(["export", str(run), "--format", "tflite"]) == 0
    check = json.loads((run / "export" / "model.tflite.check.json").read_text())
    assert check["top1_agreement"] == 1.0, check


def test_auto_trains_in_float32_on_a_cpu(tmp_path):
    """``auto`` on a machine without GPUs (this one) chooses float32, and run.json says
    both what was asked and what was chosen."""
    assert not tf.config.list_physical_devices("GPU")
    run = train_tiny(tmp_path, "runtime.mixed_precision=auto")
    runtime = json.loads((run / "run.json").read_text())["runtime"]
    assert runtime["mixed_precision"] is None
    assert runtime["mixed_precision_setting"] == "auto"
    assert runtime["cpu"] == str(machine.cpu())  # (the wall times' machine)
    assert not [n for n in _checkpoint_variables(run) if "loss_scale" in n]


@pytest.mark.parametrize(("capabilities", "devices", "chosen"), [
    ([(8, 0)], None, "mixed_float16"),
    ([(8, 0), (7, 0)], None, "mixed_float16"),
    ([(8, 0), (6, 1)], None, None),           # one GPU without tensor cores
    ([(6, 0)], None, None),
    ([], None, None),                         # a CPU: float32, BF16 or not
    ([(9, 0)], ["/cpu:0", "/cpu:1"], None),   # training on virtual CPUs beside a GPU
    ([(9, 0)], ["/gpu:0"], "mixed_float16"),
])
def test_auto_chooses_float16_only_where_every_gpu_has_tensor_cores(
        monkeypatch, capabilities, devices, chosen):
    from bnn_cli.assemble import strategy
    from bnn_cli.config.schema import RuntimeConfig

    gpus = [f"GPU:{i}" for i in range(len(capabilities))]
    monkeypatch.setattr(tf.config, "list_physical_devices",
                        lambda kind=None: gpus if kind == "GPU" else [])
    monkeypatch.setattr(tf.config.experimental, "get_device_details",
                        lambda gpu: {"compute_capability": capabilities[gpus.index(gpu)]})
    runtime = RuntimeConfig(mixed_precision="auto", strategy="mirrored" if devices else
                            "default", devices=devices)
    assert strategy.precision(runtime) == chosen
    named = RuntimeConfig(mixed_precision="mixed_bfloat16")
    assert strategy.precision(named) == "mixed_bfloat16"  # a named policy is kept


CPUINFO = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC 9R14
flags\t\t: fpu sse4_2 avx avx2 fma {extra}

processor\t: 1
model name\t: another entry, not read
"""


@pytest.mark.parametrize(("extra", "sets"), [
    ("", ("sse4_2", "avx", "avx2", "fma")),
    ("avx512f avx512bw avx512_vnni avx512_bf16",
     ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16")),
    ("amx_bf16 amx_tile", ("sse4_2", "avx", "avx2", "fma", "amx_bf16")),
])
def test_the_cpu_is_read_with_its_instruction_sets(tmp_path, extra, sets):
    info = tmp_path / "cpuinfo"
    info.write_text(CPUINFO.format(extra=extra))
    cpu = machine.cpu.__wrapped__(info)
    assert (cpu.model, cpu.instruction_sets) == ("AMD EPYC 9R14", sets)
    assert str(cpu) == f"AMD EPYC 9R14, {cpu.cores} cores ({', '.join(sets)})"
    missing = machine.cpu.__wrapped__(tmp_path / "absent")  # (not Linux: the platform's name)
    assert missing.instruction_sets == () and missing.model
