"""Multi-stage configs: each stage checked as a whole config before anything is written,
trained one after another in one run directory from the weights the stage before
selected, resumed inside the stage that was interrupted; distillation from an earlier
stage or another run, with its loss terms as the config weighs them."""

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICKSTART

from bnn_cli.cli import main

FAST = ["training.steps_per_epoch=4", "training.batch_size=16"]

TWO_STEP = """
stages:
  - name: activations            # ReActNet's step 1: binary activations, real weights
    set:
      model.defaults.QuantConv2D.kernel_quantizer: null
      model.defaults.QuantConv2D.kernel_constraint: null
      model.defaults.QuantDense.kernel_quantizer: null
      model.defaults.QuantDense.kernel_constraint: null
      training.epochs: 2
  - name: weights                # step 2: binary weights too
    set: {training.epochs: 2, training.learning_rate: 0.002}
"""

DISTILLED = TWO_STEP + """    distill: {teacher: activations, temperature: 2.0, kd_weight: 0.7,
              label_weight: 0.5, attention_weight: 3.0,
              attention: [{student: quant_conv2d_2}]}
"""


def write(tmp_path: Path, stages: str, name: str = "staged.yaml") -> Path:
    path = tmp_path / name
    path.write_text(QUICKSTART.read_text() + stages)
    return path


def rows(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]


def train(config: Path, output: Path, *extra: str) -> Path:
    assert main(["train", str(config), *FAST, *extra, "--output", str(output)]) == 0
    (run,) = [p for p in output.iterdir() if p.is_dir()]
    return run


# ---------------------------------------------------------------------------------------
# Checking
# ---------------------------------------------------------------------------------------


def test_each_stage_is_the_file_with_its_changes_then_the_command_line(tmp_path):
    from bnn_cli.assemble.check import check

    checked = check(write(tmp_path, TWO_STEP), ["training.batch_size=8"])
    first, second = checked.stages
    assert (first.name, second.name) == ("activations", "weights")
    assert first.checked.spec.model.defaults["QuantConv2D"]["kernel_quantizer"] is None
    assert second.checked.spec.model.defaults["QuantConv2D"]["kernel_quantizer"] == "ste_sign"
    assert second.checked.spec.training.learning_rate == 0.002
    assert first.checked.spec.training.epochs == 2
    # The command line applies to every stage, after the stage's own changes.
    assert {s.checked.spec.training.batch_size for s in checked.stages} == {8}
    assert checked.final is second.checked and second.checked.spec.stages is None
    overridden = check(write(tmp_path, TWO_STEP), ["training.epochs=1"])
    assert [s.checked.spec.training.epochs for s in overridden.stages] == [1, 1]


def test_stages_given_on_the_command_line(tmp_path):
    from bnn_cli.assemble.check import check

    checked = check(QUICKSTART, ["stages=[{name: a, set: {training.epochs: 1}}, {name: b}]"])
    assert [s.checked.spec.training.epochs for s in checked.stages] == [1, 20]


def _error(capsys, config: Path) -> str:
    capsys.readouterr()
    assert main(["check", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def _line(config: Path, text: str) -> int:
    return next(i for i, line in enumerate(config.read_text().splitlines(), 1)
                if text in line)


def test_a_bad_value_in_a_stage_is_reported_at_its_line(tmp_path, capsys):
    config = write(tmp_path, TWO_STEP.replace("training.learning_rate: 0.002",
                                              "model.defaults.QuantDense.kernel_quantizer: "
                                              "ste_sing"))
    err = _error(capsys, config)
    assert f"{config}:{_line(config, 'ste_sing')}:" in err
    assert "in stage 'weights'" in err and "ste_sign" in err  # (did you mean)


@pytest.mark.parametrize(("stages", "message"), [
    (TWO_STEP.replace("name: weights", "name: activations"),
     "a stage named 'activations' comes earlier"),
    (TWO_STEP + "    distill: {teacher: weights}\n", "is this stage or a later one"),
    (TWO_STEP + "    distill: {teacher: nowhere}\n",
     "is neither an earlier stage of this config, a run directory nor a Keras model file"),
    (DISTILLED.replace("student: quant_conv2d_2", "student: quant_conv2d_9"),
     "the student model has no layer 'quant_conv2d_9'"),
    (TWO_STEP.replace("set: {training.epochs: 2", "set: {training.epochz: 2"),
     "in stage 'weights'"),
    (TWO_STEP.replace("model.defaults.QuantDense.kernel_constraint", "model.nothing.x"),
     "stages[0].set"),
    (TWO_STEP + "    frm: last\n", "stages[1].frm: unknown key 'frm'; did you mean 'from'?"),
    (TWO_STEP + "    from: lst\n", "stages[1].from: Input should be 'best', 'last' or 'none'"),
])
def test_stage_mistakes(tmp_path, capsys, stages, message):
    err = _error(capsys, write(tmp_path, stages))
    assert message in err, err


def test_distillation_needs_logits(tmp_path, capsys):
    config = write(tmp_path, DISTILLED)
    text = config.read_text().replace("    - {type: Activation, activation: softmax}\n", "")
    text = text.replace("    - {type: QuantDense, units: 10}",
                        "    - {type: QuantDense, units: 10, activation: softmax}")
    config.write_text(text)
    err = _error(capsys, config)
    assert "must end with {type: Activation, activation: softmax}" in err


def test_nothing_is_written_when_a_later_stage_cannot_train(tmp_path, capsys):
    """The second stage's loss does not fit the labels: found before the run starts."""
    config = write(tmp_path, TWO_STEP.replace(
        "training.learning_rate: 0.002", "training.loss: categorical_crossentropy"))
    out = tmp_path / "runs"
    assert main(["train", str(config), *FAST, "--output", str(out)]) == 2
    assert not out.exists() or not list(out.iterdir())


# ---------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def two_step(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("two_step")
    return train(write(folder, TWO_STEP), folder / "runs")


def test_one_run_directory_holds_the_stages_one_after_another(two_step):
    history = rows(two_step)
    assert [(r["epoch"], r["stage"]) for r in history] == [
        (1, "activations"), (2, "activations"), (3, "weights"), (4, "weights")]
    status = json.loads((two_step / "run.json").read_text())
    assert status["status"] == "completed" and status["stage"] == "weights"
    assert status["epochs_done"] == 4
    # The best checkpoint is chosen within the last stage: its model is the run's.
    assert status["test"]["epoch"] in (3, 4)
    pointers = {p.stem: json.loads(p.read_text())["checkpoint"]
                for p in (two_step / "checkpoints").glob("*.json")}
    kept = {p.name for p in (two_step / "checkpoints").glob("epoch-*")}
    assert set(pointers.values()) == kept  # what each stage selected is kept, no more
    assert pointers["stage-activations"] in ("epoch-0001", "epoch-0002")
    assert (two_step / "curves.png").stat().st_size > 0
    header = (two_step / "metrics.csv").read_text().splitlines()[0]
    assert header.startswith("epoch,stage,")


def test_eval_and_export_use_the_last_stages_model(two_step, capsys):
    from bnn_cli.deploy.targets import TargetOptions, load_trained

    job, _, _ = load_trained(two_step, TargetOptions(checkpoint="best"))
    assert job.model.layers[1].kernel_quantizer is not None  # binary weights: stage 2
    capsys.readouterr()
    assert main(["eval", str(two_step), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    status = json.loads((two_step / "run.json").read_text())
    assert report["metrics"]["accuracy"] == pytest.approx(
        status["test"]["metrics"]["accuracy"])


def test_a_stage_starts_from_the_weights_the_stage_before_selected(tmp_path):
    """With a learning rate of 1e-12, the second stage ends where it started: with the
    kernels of the first stage's selected checkpoint."""
    from bnn_cli.assemble.job import restore
    from bnn_cli.deploy.targets import TargetOptions, load_trained

    config = write(tmp_path, TWO_STEP.replace("training.learning_rate: 0.002",
                                              "training.learning_rate: 1.0e-12"))
    run = train(config, tmp_path / "runs")
    job, _, _ = load_trained(run, TargetOptions(checkpoint="last"))
    ended = [layer.kernel.numpy() for layer in job.model.layers if hasattr(layer, "kernel")]
    from bnn_cli.rundir.run import RunDir

    restore(job, RunDir.open(run).load_checkpoint("stage-activations"), partial=True)
    started = [layer.kernel.numpy() for layer in job.model.layers if hasattr(layer, "kernel")]
    for a, b in zip(ended, started, strict=True):
        np.testing.assert_allclose(a, b, atol=1e-6)
    assert not all(np.allclose(a, 0) for a in ended)


def test_carry_weights_by_name_and_shape():
    from bnn_cli._keras import keras
    from bnn_cli.assemble.job import carry_weights

    def model(units):
        inp = keras.Input((4,))
        x = keras.layers.Dense(3, name="a")(inp)
        return keras.Model(inp, keras.layers.Dense(units, name="b")(x))

    source, target = model(2), model(5)
    carried, fresh = carry_weights(source, target)
    assert (carried, fresh) == (1, ["b"])
    np.testing.assert_array_equal(target.get_layer("a").kernel.numpy(),
                                  source.get_layer("a").kernel.numpy())


# ---------------------------------------------------------------------------------------
# Distillation
# ---------------------------------------------------------------------------------------


def test_soft_targets_and_attention_maps_by_their_formulas():
    from bnn_cli.assemble.distillation import attention_map, soft_target_loss

    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(4, 10)), rng.normal(size=(4, 10))
    temp = 3.0

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    p_t, p_s = softmax(t / temp), softmax(s / temp)
    want = temp ** 2 * np.mean(np.sum(p_t * np.log(p_t / p_s), axis=-1))
    got = soft_target_loss(t.astype("float32"), s.astype("float32"), temp).numpy()
    assert got == pytest.approx(want, rel=1e-5)
    assert soft_target_loss(t.astype("float32"), t.astype("float32"), temp).numpy() == \
        pytest.approx(0.0, abs=1e-6)

    x = rng.normal(size=(2, 3, 3, 5)).astype("float32")
    energy = (x ** 2).sum(-1).reshape(2, -1)
    np.testing.assert_allclose(attention_map(x).numpy(),
                               energy / np.linalg.norm(energy, axis=-1, keepdims=True),
                               rtol=1e-5)


@pytest.fixture(scope="module")
def distilled(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("distilled")
    return train(write(folder, DISTILLED), folder / "runs")


def test_a_distilled_stage_logs_its_weighted_terms(distilled):
    history = rows(distilled)
    first, distilled_rows = history[:2], history[2:]
    assert all("distill_loss" not in r for r in first)
    for r in distilled_rows:
        assert r["stage"] == "weights"
        # The epoch's loss is the weighted sum of its terms' epoch means (linear).
        assert r["loss"] == pytest.approx(0.5 * r["label_loss"] + 0.7 * r["distill_loss"]
                                          + 3.0 * r["attention_loss"], rel=1e-4)
        assert r["distill_loss"] > 0 and r["attention_loss"] > 0
        assert "val_loss" in r and "val_distill_loss" not in r  # validation: the student's


def test_distilling_from_another_run(distilled, tmp_path):
    stages = """
stages:
  - name: student
    set: {training.epochs: 1}
    distill: {teacher: TEACHER, temperature: 4.0}
""".replace("TEACHER", str(distilled))
    run = train(write(tmp_path, stages), tmp_path / "runs")
    (row,) = rows(run)
    assert row["stage"] == "student" and row["distill_loss"] > 0


@pytest.mark.parametrize("after", [2, 3])
def test_resume_continues_inside_the_interrupted_stage(distilled, tmp_path, monkeypatch,
                                                       after):
    """Stopped after epoch 2 (the first stage's end, before the second began) or 3
    (inside the distilled stage): resuming ends with the uninterrupted run's metrics."""
    from bnn_cli.training import callbacks

    original = callbacks._save_checkpoint

    def stop_after(job, state, improved):
        original(job, state, improved)
        if state.epoch == after:
            raise KeyboardInterrupt

    monkeypatch.setattr(callbacks, "_save_checkpoint", stop_after)
    out = tmp_path / "runs"
    assert main(["train", str(write(tmp_path, DISTILLED)), *FAST, "--output", str(out)]) \
        == 130
    monkeypatch.setattr(callbacks, "_save_checkpoint", original)
    (run,) = list(out.iterdir())
    assert main(["train", "--resume", str(run)]) == 0
    got, want = rows(run), rows(distilled)
    assert [r["stage"] for r in got] == [r["stage"] for r in want]
    for a, b in zip(got, want, strict=True):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-4, abs=1e-5)
        assert a["val_accuracy"] == pytest.approx(b["val_accuracy"], abs=1e-6)


@pytest.mark.parametrize("start", ["last", "none"])
def test_a_stage_starts_from_what_its_from_names(tmp_path, capsys, start):
    """``from: last`` starts from the last epoch of the stage before (kept as the
    ``start-NAME`` pointer), ``from: none`` from fresh weights. With a learning rate of
    1e-12 the second stage ends where it started."""
    from bnn_cli.assemble.job import restore
    from bnn_cli.deploy.targets import TargetOptions, load_trained
    from bnn_cli.rundir.run import RunDir

    stages = TWO_STEP.replace("training.learning_rate: 0.002",
                              "training.learning_rate: 1.0e-12") + f"    from: {start}\n"
    run = train(write(tmp_path, stages), tmp_path / "runs")
    err = capsys.readouterr().err
    job, _, _ = load_trained(run, TargetOptions(checkpoint="last"))

    def kernels() -> list[np.ndarray]:
        return [layer.kernel.numpy() for layer in job.model.layers if hasattr(layer, "kernel")]

    ended = kernels()
    folder = RunDir.open(run)
    if start == "last":
        assert folder.pointed("start-weights") == "epoch-0002"  # stage 1's last epoch
        assert "from: last" in err
        restore(job, folder.load_checkpoint("start-weights"), partial=True)
        for a, b in zip(ended, kernels(), strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
    else:
        assert folder.pointed("start-weights") is None and "fresh weights" in err
        restore(job, folder.load_checkpoint("stage-activations"), partial=True)
        assert not all(np.allclose(a, b, atol=1e-3) for a, b in zip(ended, kernels(),
                                                                    strict=True))


def test_the_zoos_attention_loss_against_its_code_in_numpy():
    """``attention_form: zoo`` is larq_zoo's AttentionMatchingLossLayer (knowledge_
    distillation.py), transcribed in NumPy: q = mean_c(x^2) flattened / max(q); per
    pair and example mean((q_s - q_t)^2); the mean over examples and pairs."""
    import tensorflow as tf

    from bnn_cli.assemble.distillation import attention_loss

    rng = np.random.default_rng(0)
    students = [rng.normal(size=(3, 4, 5, 6)), rng.normal(size=(3, 2, 2, 8))]
    teachers = [rng.normal(size=(3, 4, 5, 9)), rng.normal(size=(3, 2, 2, 8))]

    def q(x):
        area = (x ** 2).mean(-1).reshape(len(x), -1)
        return area / area.max(-1, keepdims=True)

    per_pair = [((q(s) - q(t)) ** 2).mean(-1) for s, t in zip(students, teachers, strict=True)]
    expected = np.stack(per_pair, -1).mean()
    as_tf = [[tf.constant(x, tf.float32) for x in xs] for xs in (students, teachers)]
    assert float(attention_loss(*as_tf, "zoo")) == pytest.approx(expected, rel=1e-5)
    def a(x):
        energy = (x ** 2).sum(-1).reshape(len(x), -1)
        return energy / np.linalg.norm(energy, axis=-1, keepdims=True)

    paper = sum(np.linalg.norm(a(s) - a(t), axis=-1).mean()
                for s, t in zip(students, teachers, strict=True))
    assert float(attention_loss(*as_tf, "paper")) == pytest.approx(paper, rel=1e-5)
