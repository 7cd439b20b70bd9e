"""Teachers from outside the run: a Keras model file (vetted, never running code from it)
with its own input preprocessing, frozen; several teachers with weights. Their logits
equal the file loaded in Keras, their loss equals NumPy's, and every mistake in naming
one is located in the config with its fix."""

from pathlib import Path

import numpy as np
import pytest
from conftest import QUICKSTART

from bnn_cli.cli import main

FAST = ["training.steps_per_epoch=3", "training.batch_size=16", "training.epochs=1"]


def keras_teacher(path: Path, *, shape=(8, 8, 1), classes=10, final="dense",
                  seed=0) -> Path:
    """A small real-valued CNN saved to ``path``; its softmax is the Dense layer's own
    activation (``dense``, as keras.applications end) or a separate layer."""
    from bnn_cli._keras import keras

    keras.utils.set_random_seed(seed)
    x = inputs = keras.Input(shape)
    x = keras.layers.Conv2D(8, 3, padding="same", activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    if final == "dense":
        outputs = keras.layers.Dense(classes, activation="softmax")(x)
    else:
        outputs = keras.layers.Softmax()(keras.layers.Dense(classes)(x))
    keras.Model(inputs, outputs).save(path)
    return path


def softmax(z, t=1.0):
    e = np.exp(z / t - (z / t).max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def kl(teacher_logits, student_logits, t):
    p_t, p_s = softmax(teacher_logits, t), softmax(student_logits, t)
    return t ** 2 * np.mean(np.sum(p_t * np.log(p_t / p_s), -1))


@pytest.mark.parametrize("suffix,final", [(".h5", "dense"), (".keras", "dense"),
                                          (".h5", "softmax_layer")])
def test_a_model_files_logits_equal_the_file_loaded_in_keras(tmp_path, suffix, final):
    from bnn_cli._keras import keras
    from bnn_cli.assemble.distillation import teacher_input, teacher_logits
    from bnn_cli.assemble.vetting import load_vetted_model
    from bnn_cli.config.schema import TeacherInput

    path = keras_teacher(tmp_path / f"teacher{suffix}", shape=(12, 12, 1), final=final)
    x = np.random.default_rng(1).uniform(-1, 1, (5, 8, 8, 1)).astype("float32")
    seen = TeacherInput(size=(12, 12), scale=0.5, offset=0.5)  # [-1, 1] -> [0, 1]

    reference = keras.models.load_model(path)
    want_x = keras.layers.Resizing(12, 12)(x).numpy() * 0.5 + 0.5
    want = reference(want_x).numpy()

    teacher = load_vetted_model(path)
    logits = keras.Model(teacher.inputs, teacher_logits(teacher))(teacher_input(x, seen))
    np.testing.assert_allclose(softmax(logits.numpy()), want, rtol=1e-5, atol=1e-7)
    dense = [layer for layer in reference.layers if isinstance(layer, keras.layers.Dense)][0]
    features = keras.Model(reference.inputs, dense.input)(want_x).numpy()
    kernel, bias = dense.get_weights()
    np.testing.assert_allclose(logits.numpy(), features @ kernel + bias, rtol=1e-4,
                               atol=1e-5)


def test_teacher_input_resizes_reverses_channels_and_scales():
    from bnn_cli.assemble.distillation import teacher_input
    from bnn_cli.config.schema import TeacherInput

    x = np.arange(2 * 4 * 4 * 3, dtype="float32").reshape(2, 4, 4, 3)
    got = teacher_input(x, TeacherInput(channels="bgr", scale=[1.0, 2.0, 3.0],
                                        offset=[0.0, -1.0, 5.0])).numpy()
    np.testing.assert_allclose(got, x[..., ::-1] * [1, 2, 3] + [0, -1, 5])
    assert teacher_input(x, TeacherInput(size=(2, 6))).shape == (2, 2, 6, 3)
    assert teacher_input(x, None) is x


def test_two_teachers_soft_targets_against_numpy(tmp_path):
    """The soft-target term is sum_i weight_i * T^2 KL(p_i || p_s), each teacher seeing
    the input through its own preprocessing; the teachers do not change."""
    from bnn_cli._keras import keras
    from bnn_cli.assemble.distillation import Distiller
    from bnn_cli.assemble.vetting import load_vetted_model
    from bnn_cli.config.schema import Distill

    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (6, 8, 8, 1)).astype("float32")
    y = rng.integers(0, 10, 6)
    files = [keras_teacher(tmp_path / "a.h5", seed=1),
             keras_teacher(tmp_path / "b.keras", shape=(16, 16, 1), final="layer", seed=2)]
    spec = Distill(teacher=[{"model": "a.h5", "weight": 0.25},
                            {"model": "b.keras", "weight": 0.75,
                             "input": {"size": [16, 16], "scale": 2.0, "offset": 1.0}}],
                   temperature=2.0, kd_weight=1.5, label_weight=0.5)
    student = keras.Sequential([keras.Input((8, 8, 1)), keras.layers.Flatten(),
                                keras.layers.Dense(10), keras.layers.Activation("softmax")])
    teachers = [load_vetted_model(f) for f in files]
    before = [t.get_weights() for t in teachers]
    trainer = Distiller(student, teachers, spec)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    logs = trainer.train_on_batch(x, y, return_dict=True)

    def logits(model, inputs):  # softmax is shift-invariant: log p is the logits + c
        return np.log(keras.models.load_model(model)(inputs).numpy())

    student_logits = keras.Model(student.inputs, student.layers[-1].input)(x).numpy()
    resized = keras.layers.Resizing(16, 16)(x).numpy() * 2.0 + 1.0
    want_soft = (0.25 * kl(logits(files[0], x), student_logits, 2.0)
                 + 0.75 * kl(logits(files[1], resized), student_logits, 2.0))
    want_label = np.mean(-np.log(softmax(student_logits)[np.arange(6), y]))
    assert logs["distill_loss"] == pytest.approx(want_soft, rel=1e-4)
    assert logs["loss"] == pytest.approx(0.5 * want_label + 1.5 * want_soft, rel=1e-4)
    for teacher, weights in zip(teachers, before, strict=True):
        assert not teacher.trainable
        for a, b in zip(teacher.get_weights(), weights, strict=True):
            np.testing.assert_array_equal(a, b)


def _config(tmp_path: Path, distill: str) -> Path:
    path = tmp_path / "taught.yaml"
    path.write_text(QUICKSTART.read_text() + f"""
stages:
  - name: student
    distill: {distill}
""")
    return path


def test_training_from_a_model_file_teacher(tmp_path, capsys, monkeypatch):
    keras_teacher(tmp_path / "teacher.h5", shape=(16, 16, 1))
    config = _config(tmp_path, "{teacher: [{model: teacher.h5, weight: 2.0, "
                               "input: {size: [16, 16]}}], temperature: 2.0}")
    assert main(["check", str(config)]) == 0
    assert "learns from 'teacher.h5' x 2" in capsys.readouterr().out
    out = tmp_path / "runs"
    assert main(["train", str(config), *FAST, "--output", str(out)]) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    row = __import__("json").loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["stage"] == "student" and row["distill_loss"] > 0
    # The run's stored config names the teacher relative to the original config's
    # folder: evaluation re-checks it from anywhere.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["eval", str(run)]) == 0


@pytest.mark.parametrize("distill,teacher,message", [
    ("{teacher: broken.h5}", "garbage",
     "broken.h5 is not a model file"),
    ("{teacher: [{model: t.h5}]}", "classes",
     "stages[0].distill.teacher[0].model: the model file"),
    ("{teacher: [{model: t.h5}]}", "shape",
     "set the teacher's input.size to its height and width"),
    ("{teacher: notes.txt}", "text", "is a file but not a Keras model file"),
    ("{teacher: [{model: t.h5}, {model: t.h5}], attention: [{student: quant_conv2d_2}]}",
     "ok", "stages[0].distill.attention: attention transfer compares the student with one"),
    ("{teacher: []}", "ok", "stages[0].distill.teacher"),
    ("{teacher: [{model: t.h5, wieght: 2}]}", "ok", "wieght"),
    ("{teacher: [{model: t.h5, input: {scale: [1.0, 2.0]}}]}", "ok",
     "its input.scale has 2 values; give one, or one per channel (1)"),
])
def test_teacher_mistakes_are_located(tmp_path, capsys, distill, teacher, message):
    if teacher == "garbage":
        (tmp_path / "broken.h5").write_bytes(b"not a model")
    elif teacher == "text":
        (tmp_path / "notes.txt").write_text("hello")
    else:
        keras_teacher(tmp_path / "t.h5", classes=7 if teacher == "classes" else 10,
                      shape=(9, 9, 1) if teacher == "shape" else (8, 8, 1))
    config = _config(tmp_path, distill)
    assert main(["check", str(config)]) == 2
    err = capsys.readouterr().err
    assert message in err and f"{config}:" in err and "Traceback" not in err, err
    if teacher == "classes":
        assert "gives 7 outputs, but the dataset has 10 classes" in err


def test_distilling_in_mixed_float16(tmp_path):
    """The distilling trainer takes the model's loss-scale optimizer as it is (wrapping
    an optimizer twice is an error), and the loss scale is saved with the checkpoint."""
    import json

    import tensorflow as tf

    from bnn_cli.rundir.run import RunDir

    keras_teacher(tmp_path / "teacher.h5")
    config = _config(tmp_path, "{teacher: teacher.h5}")
    out = tmp_path / "runs"
    assert main(["train", str(config), *FAST, "runtime.mixed_precision=mixed_float16",
                 "--output", str(out)]) == 0
    (run,) = [p for p in out.iterdir() if p.is_dir()]
    row = json.loads((run / "metrics.jsonl").read_text().splitlines()[0])
    assert row["distill_loss"] > 0 and np.isfinite(row["loss"])
    reader = tf.train.load_checkpoint(RunDir(run).load_checkpoint("last").prefix)
    assert [n for n in reader.get_variable_to_shape_map() if "loss_scale" in n]
