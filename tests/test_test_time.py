"""Test-time augmentation (``data.test_time_augmentation: horizontal_flip``): validation,
the test evaluation, ``bnn eval`` and ``bnn predict`` score the mean of the model's
outputs on each image and on its mirror image; training is the model's own."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import QUICKSTART, train_tiny

from bnn_cli._keras import keras, tf
from bnn_cli.assemble.test_time import TestTimeAugmented
from bnn_cli.cli import main

TTA = "data.test_time_augmentation=horizontal_flip"


def _model(seed: int = 0) -> keras.Model:
    """A small model that is not mirror-symmetric, with a regularization loss."""
    keras.utils.set_random_seed(seed)
    return keras.Sequential([
        keras.Input((6, 6, 1)),
        keras.layers.Conv2D(3, 3, kernel_regularizer=keras.regularizers.L2(0.1)),
        keras.layers.BatchNormalization(),
        keras.layers.Flatten(), keras.layers.Dense(4), keras.layers.Activation("softmax")])


def test_scores_the_mean_over_the_mirror_and_trains_the_model_alone():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 4, 5)
    model = _model()
    wrapper = TestTimeAugmented(model)
    mean = (model(x).numpy() + model(x[:, :, ::-1]).numpy()) / 2
    np.testing.assert_allclose(wrapper(x).numpy(), mean, rtol=1e-6)
    assert not np.allclose(model(x).numpy(), mean, atol=1e-3)  # the mirror counts
    np.testing.assert_array_equal(wrapper(x, training=True).numpy(),
                                  model(x, training=True).numpy())
    # One step through the wrapper is one step of the model itself, its regularization
    # loss included; the wrapper holds no weights of its own.
    twin = _model()
    twin.set_weights(model.get_weights())
    assert len(wrapper.losses) == len(model.losses) == 1
    for trained in (wrapper, twin):
        trained.compile(optimizer=keras.optimizers.SGD(0.5),
                        loss="sparse_categorical_crossentropy")
        trained.train_on_batch(x, y)
    assert len(wrapper.weights) == len(model.weights)
    for a, b in zip(model.get_weights(), twin.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.allclose(model.layers[0].get_weights()[0], _model().layers[0].get_weights()[0])


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("runs"), TTA)


def _by_hand(run: Path, split: str) -> dict[str, np.ndarray]:
    """The chosen checkpoint's plain and mirrored probabilities on ``split``, and the
    labels, computed here from the model alone."""
    from bnn_cli.data import pipeline as data
    from bnn_cli.deploy.targets import TargetOptions, load_trained

    job, _, _ = load_trained(run, TargetOptions(checkpoint="best"))
    ds = data.load_split(job.checked.spec.data, split, training=False, batch_size=1000,
                         seed=None, data_dir=job.data_dir)
    x, y = (np.concatenate(parts) for parts in zip(*ds.as_numpy_iterator(), strict=True))
    plain = job.model.predict(x, verbose=0)
    return {"x": x, "y": y, "plain": plain,
            "mean": (plain + job.model.predict(x[:, :, ::-1], verbose=0)) / 2}


def _accuracy(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(p.argmax(-1) == y))


def _loss(p: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(-np.log(np.clip(p[np.arange(len(y)), y], 1e-7, 1))))


def test_validation_and_test_score_the_mean(run):
    """The epoch's val_accuracy (which chose the checkpoint), the test entry of run.json
    and ``bnn eval`` are the mirrored mean's, not the plain model's."""
    from bnn_cli import api

    record = json.loads((run / "run.json").read_text())
    val = _by_hand(run, "train[90%:]")
    assert record["best"]["val_accuracy"] == pytest.approx(_accuracy(val["mean"], val["y"]),
                                                           abs=1e-6)
    test = _by_hand(run, "test")
    want = {"accuracy": _accuracy(test["mean"], test["y"]),
            "loss": _loss(test["mean"], test["y"])}
    assert _loss(test["plain"], test["y"]) != pytest.approx(want["loss"], rel=1e-3)
    for test in (record["test"], api.evaluate(run).as_dict()):
        assert test["metrics"]["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)
        assert test["metrics"]["loss"] == pytest.approx(want["loss"], rel=1e-4)
        assert test["test_time_augmentation"] == "horizontal_flip"  # (said where it's read)


def test_predict_averages_the_run_and_its_exported_file(run, capsys):
    """``bnn predict`` gives the mirrored mean's probabilities from the run directory and
    from an exported file alike (the file itself is the single pass)."""
    split = "test[:10]"
    want = _by_hand(run, split)["mean"]
    assert main(["export", str(run), "--format", "keras"]) == 0
    exported = next((run / "export").glob("*.keras"))
    for target in (run, exported):
        capsys.readouterr()
        assert main(["predict", str(target), "--split", split, "--top-k", "1", "--json"]) == 0
        report = json.loads(capsys.readouterr().out)
        top = [p["top"][0] for p in report["predictions"]]
        assert [t["class"] for t in top] == list(want.argmax(-1))
        np.testing.assert_allclose([t["probability"] for t in top], want.max(-1), rtol=1e-5)


def test_a_distilling_stage_validates_the_mean():
    """The distilling trainer scores its student through the test-time wrapper."""
    from bnn_cli.assemble.distillation import Distiller
    from bnn_cli.config.schema import Distill

    rng = np.random.default_rng(1)
    x = rng.normal(size=(8, 6, 6, 1)).astype("float32")
    y = rng.integers(0, 4, 8)
    student = _model(1)
    scorer = TestTimeAugmented(student)
    trainer = Distiller(student, [_model(2)], Distill(teacher="teacher"), scorer=scorer)
    trainer.compile(optimizer=keras.optimizers.SGD(0.0),
                    loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    got = trainer.evaluate(x, y, verbose=0, return_dict=True)
    mean, plain = scorer(x).numpy(), student(x).numpy()
    assert got["loss"] == pytest.approx(_loss(mean, y), rel=1e-5)  # (the label loss)
    assert got["accuracy"] == pytest.approx(_accuracy(mean, y), abs=1e-6)
    assert _loss(plain, y) != pytest.approx(_loss(mean, y), rel=1e-3)


def test_mixed_float16_scales_the_loss_through_the_wrapper(tmp_path):
    """The wrapper trains under the model's precision: mixed_float16 scales its loss,
    and the loss scale is saved with the checkpoint."""
    from bnn_cli.rundir.run import RunDir

    run = train_tiny(tmp_path, TTA, "runtime.mixed_precision=mixed_float16")
    reader = tf.train.load_checkpoint(RunDir(run).load_checkpoint("last").prefix)
    assert [n for n in reader.get_variable_to_shape_map() if "loss_scale" in n]
    record = json.loads((run / "run.json").read_text())
    assert np.isfinite(record["test"]["metrics"]["loss"])


def test_an_unknown_kind_is_a_located_error(tmp_path, capsys):
    config = tmp_path / "tta.yaml"
    config.write_text(QUICKSTART.read_text().replace(
        "data:\n", "data:\n  test_time_augmentation: vertical_flip\n", 1))
    assert "test_time_augmentation" in config.read_text()
    assert main(["train", str(config), "--output", str(tmp_path / "runs")]) == 2
    err = capsys.readouterr().err
    line = config.read_text().splitlines().index("  test_time_augmentation: vertical_flip") + 1
    assert f"{config}:{line}" in err and "data.test_time_augmentation" in err
    assert "horizontal_flip" in err and "Traceback" not in err
    assert not (tmp_path / "runs").exists()
