"""The shipped multi-stage recipes (configs/recipes/): each checks, stage by stage, with
the stages and teachers it documents; the small ones train end to end (one short epoch
a stage) with every stage's terms logged."""

import json

import pytest
import yaml
from conftest import ROOT, dataset_for

from bnn_cli.cli import main

RECIPES = sorted((ROOT / "configs" / "recipes").glob("*.yaml"))

# name -> (stage names, the teacher of each stage or None)
EXPECTED = {
    "bireal_fashion_two_step": (["binary_activations", "binary_weights"], [None, None]),
    "bireal_fashion_real_to_binary": (["real", "binary_activations", "binary"],
                                      [None, "real", "binary_activations"]),
    "quicknet_mnist_two_step": (["binary_activations", "binary_weights"], [None, None]),
    "quicknet_mnist_real_to_binary": (["real", "binary_activations", "binary"],
                                      [None, "real", "binary_activations"]),
    "larq_mnist_reactnet": (["real", "binary_activations", "binary"],
                            [None, "real", "real"]),
    "larq_fashion_reactnet": (["real", "binary_activations", "binary"],
                              [None, "real", "real"]),
}


def _dataset(recipe) -> str:
    from bnn_cli.config.source import load_config_document

    return load_config_document(recipe).data["data"]["dataset"]


def test_every_recipe_is_listed():
    assert sorted(p.stem for p in RECIPES) == sorted(EXPECTED)


@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipes_check_stage_by_stage(recipe, tmp_path):
    from bnn_cli.assemble.check import check

    names, teachers = EXPECTED[recipe.stem]
    with dataset_for(_dataset(recipe), tmp_path) as data_dir:
        checked = check(recipe, data_dir=data_dir)
    assert [s.name for s in checked.stages] == names
    assert [s.distill.teacher if s.distill else None for s in checked.stages] == teachers
    # The last stage is the BNN the file extends: it switches no quantizer off.
    assert not any("quantizer" in key for key in checked.stages[-1].set)


def _accuracy_on_raw_test(model_file, data_dir: str, split: str) -> float:
    """Top-1 accuracy of a saved model on a TFDS split read and rescaled to [-1, 1] here
    (the recipes' preprocessing), independently of bnn_cli's data pipeline."""
    import numpy as np
    import tensorflow_datasets as tfds

    from bnn_cli.models import load_model

    ds = tfds.load("mnist", split=split, data_dir=data_dir, shuffle_files=False)
    examples = list(ds.as_numpy_iterator())
    x = np.stack([e["image"] for e in examples]).astype(np.float32) / 255.0 * 2.0 - 1.0
    labels = np.array([e["label"] for e in examples])
    probabilities = load_model(model_file, compile=False).predict(x, verbose=0)
    return float(np.mean(probabilities.argmax(-1) == labels))


@pytest.mark.parametrize("recipe", ["quicknet_mnist_real_to_binary",
                                    "quicknet_mnist_two_step"])
def test_small_recipes_train_through_their_stages(recipe, tmp_path):
    path = ROOT / "configs" / "recipes" / f"{recipe}.yaml"
    with dataset_for("mnist", tmp_path) as data_dir:
        out = tmp_path / "runs"
        assert main(["train", str(path), "training.epochs=1", "training.steps_per_epoch=2",
                     "training.batch_size=16", "data.train_split=train[:512]",
                     "data.validation_split=train[512:640]", "data.test_split=test[:128]",
                     "--data-dir", data_dir, "--output", str(out)]) == 0
    (run,) = list(out.iterdir())
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    names, teachers = EXPECTED[recipe]
    assert [r["stage"] for r in rows] == names
    for row, teacher in zip(rows, teachers, strict=True):
        assert ("distill_loss" in row) == (teacher is not None)
    status = json.loads((run / "run.json").read_text())
    assert status["status"] == "completed" and status["test"]["split"] == "test[:128]"
    # The recorded test accuracy is the saved model's, recomputed here on the raw split.
    accuracy = _accuracy_on_raw_test(run / "model.keras", data_dir, "test[:128]")
    assert status["test"]["metrics"]["accuracy"] == pytest.approx(accuracy, abs=1.5 / 128)
    stored = yaml.safe_load((run / "config.yaml").read_text())
    assert "extends" not in stored and stored["stages"][0]["name"] == names[0]


@pytest.mark.parametrize("recipe,single", [
    ("bireal_fashion_two_step", "fashion_mnist_bnn"),
    ("bireal_fashion_real_to_binary", "fashion_mnist_bnn"),
    ("larq_mnist_reactnet", "larq_mnist"),
    ("larq_fashion_reactnet", "larq_mnist"),
])
def test_recipes_share_the_single_stage_budget(recipe, single):
    """The recipes compared with a single-stage config in the accuracy table spend its
    epochs, split among their stages (the same budget, teacher included)."""
    from bnn_cli.assemble.check import check

    one = check(ROOT / "configs" / f"{single}.yaml", allow_unprepared_data=True)
    staged = check(ROOT / "configs" / "recipes" / f"{recipe}.yaml",
                   allow_unprepared_data=True)
    assert sum(s.checked.spec.training.epochs for s in staged.stages) \
        == one.spec.training.epochs
