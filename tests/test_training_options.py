"""Training options from the config: schedules, optimizers (Bop via case), early
stopping, flip ratios."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from bnn_cli._keras import tf
from bnn_cli.assemble.model import build_optimizer
from bnn_cli.cli import main
from bnn_cli.config.schema import Schedule, TrainingConfig
from bnn_cli.schedules import EpochSchedule

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
TINY = ["training.epochs=2", "training.steps_per_epoch=5", "training.batch_size=16"]


def lr_at(schedule: dict, epoch: float, steps: int = 10, total: int = 10) -> float:
    return float(EpochSchedule(Schedule(**schedule).model_dump(), steps, total)(epoch * steps))


def test_schedules_follow_their_formulas():
    assert lr_at({"type": "constant", "initial": 0.1}, 3) == pytest.approx(0.1)
    assert lr_at({"type": "exponential", "initial": 0.1, "decay_rate": 0.5,
                  "decay_epochs": 2}, 4) == pytest.approx(0.025)
    piecewise = {"type": "piecewise", "boundaries": [2, 5], "values": [1.0, 0.1, 0.01]}
    assert [lr_at(piecewise, e) for e in (0, 1.9, 2, 4.9, 5, 9)] == pytest.approx(
        [1.0, 1.0, 0.1, 0.1, 0.01, 0.01])
    cosine = {"type": "cosine", "initial": 1.0, "alpha": 0.1}
    assert lr_at(cosine, 0) == pytest.approx(1.0)
    assert lr_at(cosine, 5) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 2)))
    assert lr_at(cosine, 10) == pytest.approx(0.1)
    warm = {"type": "cosine", "initial": 1.0, "warmup_epochs": 2}
    assert lr_at(warm, 0) == pytest.approx(1 / 20)  # (step + 1) / warmup_steps
    assert lr_at(warm, 1) == pytest.approx(11 / 20)
    assert lr_at(warm, 2) == pytest.approx(1.0)


def test_case_optimizer_from_config():
    from bnn_cli.optimizers import Bop, CaseOptimizer

    training = TrainingConfig(optimizer={"type": "case", "binary": {"type": "Bop",
                                                                     "threshold": 1e-6},
                                         "default": {"type": "Adam"}}, learning_rate=0.01)
    opt = build_optimizer(training, 10)
    assert isinstance(opt, CaseOptimizer)
    assert any(isinstance(o, Bop) and o.get_config()["threshold"] == pytest.approx(1e-6)
               for o in opt.optimizers)


def test_unknown_optimizer_is_a_user_error(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    code = main(["train", str(QUICKSTART), "training.optimizer={type: Adamm}",
                 "--output", str(tmp_path / "runs")])
    assert code == 2
    assert "did you mean 'Adam'" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def _rows(root: Path) -> list[dict]:
    run = next(root.iterdir())
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def test_bop_training_flips_binary_weights_and_logs_flip_ratio(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    code = main(["train", str(QUICKSTART), *TINY, "training.flip_ratio=true",
                 "training.optimizer={type: case, binary: {type: Bop, threshold: 1.0e-8, "
                 "gamma: 0.01}, default: {type: Adam}}", "--output", str(tmp_path / "r")])
    assert code == 0
    rows = _rows(tmp_path / "r")
    flips = [k for k in rows[-1] if k.startswith("flip_ratio/")]
    assert flips, rows[-1]
    assert any(rows[-1][k] > 0 for k in flips)  # Bop flipped some binary weights


def test_early_stopping_remembers_and_stops(tmp_path, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    code = main(["train", str(QUICKSTART), "training.epochs=6", "training.steps_per_epoch=3",
                 "training.monitor=val_loss",
                 "training.early_stopping={patience: 0, min_delta: 1000}",
                 "--output", str(tmp_path / "r")])
    assert code == 0
    # Epoch 1 sets the best; epoch 2 cannot improve by 1000, so training stops.
    assert [r["epoch"] for r in _rows(tmp_path / "r")] == [1, 2]


def test_early_stopping_watches_its_own_metric(tmp_path):
    """early_stopping.monitor is read: the learning rate (logged each epoch) only falls
    under the cosine schedule, so watched for a rise it stops training after epoch 2,
    while the best checkpoint is still chosen by training.monitor (val_accuracy)."""
    code = main(["train", str(QUICKSTART), "training.epochs=6", "training.steps_per_epoch=3",
                 "training.early_stopping={monitor: learning_rate, patience: 0}",
                 "--output", str(tmp_path / "r")])
    assert code == 0
    rows = _rows(tmp_path / "r")
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["learning_rate"] < rows[0]["learning_rate"]
    run = next((tmp_path / "r").iterdir())
    best = json.loads((run / "run.json").read_text())["best"]
    assert set(best) == {"val_accuracy", "epoch"}


def test_steps_per_execution_trains_the_same_steps(tmp_path, monkeypatch):
    """runtime.steps_per_execution only groups steps into one call: same data, same
    updates, the same metrics as one step per call (and 5 steps an epoch do not divide
    by 2: Keras runs the remainder)."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    for name, spe in (("one", 1), ("two", 2)):
        assert main(["train", str(QUICKSTART), *TINY, f"runtime.steps_per_execution={spe}",
                     "--output", str(tmp_path / name)]) == 0
    one, two = _rows(tmp_path / "one"), _rows(tmp_path / "two")
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-6), key


def test_jit_compile_switch_reaches_the_training_step(tmp_path, monkeypatch):
    from bnn_cli.assemble.check import check
    from bnn_cli.assemble.job import prepare

    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    checked = check(QUICKSTART, ["runtime.jit_compile=true",
                                 "runtime.steps_per_execution=4"])
    job = prepare(checked, None)
    assert job.model._jit_compile is True
    assert int(job.model._steps_per_execution.numpy()) == 4
    assert main(["train", str(QUICKSTART), *TINY, "runtime.jit_compile=true",
                 "--output", str(tmp_path / "xla")]) == 0
    assert math.isfinite(_rows(tmp_path / "xla")[-1]["loss"])


def test_linear_decay_per_step_and_per_epoch():
    """Bi-Real Net's linear decay to 0 per step, and ReActNet's and AdamBNN's
    ``initial * (1 - epoch / epochs)``, held through each epoch."""
    linear = {"type": "linear", "initial": 1.0}
    assert [lr_at(linear, e) for e in (0, 2.5, 5, 10)] == pytest.approx([1.0, 0.75, 0.5, 0.0])
    per_epoch = {**linear, "per": "epoch"}
    assert [lr_at(per_epoch, e) for e in (0, 0.9, 1, 2.5, 9.9)] == pytest.approx(
        [1.0, 1.0, 0.9, 0.8, 0.1])
    assert lr_at({**linear, "alpha": 0.2}, 5) == pytest.approx(0.2 + 0.8 * 0.5)
    warm = {**linear, "warmup_epochs": 2}
    assert lr_at(warm, 1) == pytest.approx(11 / 20)  # warm-up, then decay over 8 epochs
    assert lr_at(warm, 6) == pytest.approx(0.5)
    cosine_per_epoch = {"type": "cosine", "initial": 1.0, "per": "epoch"}
    assert lr_at(cosine_per_epoch, 5.5) == pytest.approx(lr_at({"type": "cosine",
                                                                "initial": 1.0}, 5))


def test_each_case_group_follows_its_own_schedule():
    """QuickNet's recipe: Adam on the binary kernels and SGD on the rest, each with its
    own cosine schedule and warm-up (max 1e-2 and 0.1)."""
    from bnn_cli.optimizers import CaseOptimizer

    adam = {"type": "cosine", "initial": 0.01, "warmup_epochs": 1}
    sgd = {"type": "cosine", "initial": 0.1, "warmup_epochs": 2}
    training = TrainingConfig(epochs=10, learning_rate=0.5, optimizer={
        "type": "case", "binary": {"type": "Adam", "learning_rate": adam},
        "default": {"type": "SGD", "momentum": 0.9, "learning_rate": sgd}})
    opt = build_optimizer(training, 10)
    assert isinstance(opt, CaseOptimizer)
    binary, default = opt.optimizers
    assert default.get_config()["momentum"] == pytest.approx(0.9)
    weights = [tf.Variable(1.0), tf.Variable(1.0)]
    seen: dict[str, list[float]] = {"binary": [], "default": []}
    for _ in range(25):  # steps; the rate each group used at each (Keras records it)
        for name, group, w in (("binary", binary, weights[0]),
                               ("default", default, weights[1])):
            group.apply_gradients([(tf.constant(0.1), w)])
            seen[name].append(float(group.learning_rate))
    assert seen["binary"] == pytest.approx([lr_at(adam, s / 10) for s in range(25)])
    assert seen["default"] == pytest.approx([lr_at(sgd, s / 10) for s in range(25)])


def test_a_bad_schedule_in_a_case_group_is_located(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    code = main(["check", str(QUICKSTART), "training.optimizer={type: case, default: "
                 "{type: SGD, learning_rate: {type: cosin, initial: 0.1}}}"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert "training.optimizer.default.learning_rate.type" in err and "cosine" in err


def _decay_model():
    """A binary dense layer (latent kernel), batch norm, and a real dense layer."""
    from bnn_cli._keras import keras
    from bnn_cli.layers import QuantDense

    model = keras.Sequential([
        keras.Input((3,)),
        QuantDense(4, kernel_quantizer="ste_sign", kernel_constraint="weight_clip",
                   use_bias=False),
        keras.layers.BatchNormalization(),
        keras.layers.Dense(2),
    ])
    return model


def test_decoupled_weight_decay_changes_exactly_the_kinds_it_names():
    """With zero gradients, SGD's step is the decay alone: the real kernel shrinks by
    exactly lr * wd * w, the binary latent kernel by its own rate, nothing else moves."""
    import numpy as np

    from bnn_cli.assemble.model import weight_kind

    model = _decay_model()
    kinds = {v.name: weight_kind(v) for v in model.trainable_variables}
    assert sorted(kinds.values()) == ["biases", "binary_kernels", "kernels", "norms", "norms"]
    training = TrainingConfig(learning_rate=0.5, optimizer={
        "type": "SGD", "weight_decay": {"kernels": 0.1, "binary_kernels": 0.01}})
    opt = build_optimizer(training, 10)
    before = {v.name: v.numpy().copy() for v in model.trainable_variables}
    opt.apply_gradients([(tf.zeros_like(v), v) for v in model.trainable_variables])
    rate = {"kernels": 0.1, "binary_kernels": 0.01}
    for v in model.trainable_variables:
        expected = before[v.name] * (1 - 0.5 * rate.get(kinds[v.name], 0.0))
        np.testing.assert_allclose(v.numpy(), expected, rtol=1e-6)
    assert not np.allclose(before[model.layers[-1].kernel.name], model.layers[-1].kernel)


def test_decoupled_weight_decay_equals_keras_adamw_where_they_overlap():
    """Decay on every kernel (binary and real) and nothing else, with Adam, against
    Keras's AdamW told to leave the other variables alone: the same steps."""
    import numpy as np

    from bnn_cli._keras import keras

    ours, theirs = _decay_model(), _decay_model()
    theirs.set_weights(ours.get_weights())
    opt = build_optimizer(TrainingConfig(learning_rate=0.01, optimizer={
        "type": "Adam", "weight_decay": {"kernels": 0.3, "binary_kernels": 0.3}}), 10)
    adamw = keras.optimizers.AdamW(learning_rate=0.01, weight_decay=0.3)
    adamw.exclude_from_weight_decay(var_list=[
        v for v in theirs.trainable_variables if "kernel" not in v.name])
    x, y = tf.random.normal([8, 3], seed=1), tf.random.normal([8, 2], seed=2)
    for model, optimizer in ((ours, opt), (theirs, adamw)):
        for _ in range(3):
            with tf.GradientTape() as tape:
                loss = tf.reduce_mean((model(x, training=True) - y) ** 2)
            grads = tape.gradient(loss, model.trainable_variables)
            optimizer.apply_gradients(zip(grads, model.trainable_variables, strict=True))
    for a, b in zip(ours.trainable_variables, theirs.trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-7)


def test_an_unknown_kind_of_weight_is_located(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "tfds"))
    code = main(["check", str(QUICKSTART), "training.optimizer={type: Adam, weight_decay: "
                 "{kernel: 0.001}}"])
    err = capsys.readouterr().err
    assert code == 2 and "training.optimizer.weight_decay.kernel" in err
    assert "did you mean 'kernels'" in err
