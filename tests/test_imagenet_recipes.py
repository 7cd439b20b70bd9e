"""The published ImageNet recipes (configs/recipes/imagenet/): each checks with its data
section verified against a mock ImageNet (``tfds.testing.mock_data``), its resolved
values equal docs/recipes.md's table key by key, ReActNet-A has the paper's operation
counts, and (slow tier) every stage of every recipe trains a few steps at 64x64, one
recipe resumes after a kill, and one exports to the Larq Compute Engine."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import ROOT, dataset_for

from bnn_cli.cli import main

FOLDER = ROOT / "configs" / "recipes" / "imagenet"
RECIPES = sorted(FOLDER.glob("*.yaml"))
TABLE = ROOT / "docs" / "recipes.md"
COMPARED = ("optimizer", "learning rate", "epochs", "batch", "weight decay",
            "augmentation", "distillation", "starts from")
"""The table's columns that the configs give (the rest: published top-1, sources)."""


def standin_teacher(folder: Path, size: int | None = None) -> Path:
    """A small ImageNet-shaped Keras model (any input size, 1000 classes) in place of
    ReActNet's pretrained ResNet-34, which is not on this machine."""
    from bnn_cli._keras import keras

    keras.utils.set_random_seed(0)
    x = inputs = keras.Input((size, size, 3))
    x = keras.layers.Conv2D(8, 3, strides=4)(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    path = folder / "resnet34_imagenet.keras"  # (the name the recipes give)
    keras.Model(inputs, keras.layers.Dense(1000, activation="softmax")(x)).save(path)
    return path


def teacher_overrides(recipe: Path, teacher: Path) -> list[str]:
    """Point every file teacher of ``recipe`` at ``teacher``."""
    from bnn_cli.config.source import load_config_document

    stages = load_config_document(recipe).data.get("stages") or []
    return [f"stages[{i}].distill.teacher[0].model={teacher}" for i, stage in
            enumerate(stages) if isinstance((stage.get("distill") or {}).get("teacher"),
                                            list)]


# ---------------------------------------------------------------------------------------
# The table: each stage's values, written as docs/recipes.md writes them
# ---------------------------------------------------------------------------------------


def _number(x: float) -> str:
    return f"{x:g}"


def _schedule(lr) -> str:
    if isinstance(lr, (int, float)):
        return _number(lr)
    from bnn_cli.config.schema import Schedule

    lr = Schedule.model_validate(lr).model_dump() if isinstance(lr, dict) else lr.model_dump()
    kind = lr["type"]
    if kind == "piecewise":
        text = f"{_number(lr['values'][0])}, then " + ", ".join(
            f"{_number(v)} from epoch {b}" for b, v in zip(lr["boundaries"],
                                                           lr["values"][1:], strict=True))
    elif kind in ("cosine", "linear"):
        text = f"{kind} {_number(lr['initial'])} to {_number(lr['alpha'] * lr['initial'])}"
    else:
        text = f"{kind} {_number(lr['initial'])}"
    if lr.get("per", "step") == "epoch":
        text += " per epoch"
    if lr.get("warmup_epochs"):
        text += f", {_number(lr['warmup_epochs'])} epochs of warm-up"
    return text


def _optimizer(opt: dict) -> str:
    extra = {k: v for k, v in opt.items() if k not in ("type", "learning_rate")}
    return opt["type"] + (f" ({', '.join(f'{k} {_number(v)}' for k, v in extra.items())})"
                          if extra else "")


def _optimizers(spec) -> tuple[str, str]:
    opt = spec.training.optimizer.model_dump()
    if opt["type"] != "case":
        return _optimizer(opt), _schedule(opt.get("learning_rate",
                                                  spec.training.learning_rate))
    groups = {k: v for k, v in opt.items() if k != "type"}
    return ("; ".join(f"{k}: {_optimizer(v)}" for k, v in groups.items()),
            "; ".join(f"{k}: {_schedule(v.get('learning_rate', spec.training.learning_rate))}"
                      for k, v in groups.items()))


def _weight_decay(spec) -> str:
    found: dict[float, set[str]] = {}
    model = spec.model
    for kind, args in model.defaults.items():
        if (args or {}).get("kernel_regularizer"):
            found.setdefault(args["kernel_regularizer"]["l2"], set()).add(kind)
    for layer in model.layers:
        args = layer.model_dump() if hasattr(layer, "model_dump") else dict(layer)
        reg = args.get("kernel_regularizer")
        if reg:
            found.setdefault(reg["l2"], set()).add(args.get("type", "?"))
    parts = [f"L2 {_number(l2)} on {', '.join(sorted(kinds))} kernels"
             for l2, kinds in sorted(found.items())]
    decay = spec.training.optimizer.model_dump().get("weight_decay")
    if decay:
        parts.append(f"decoupled {decay}")
    return "; ".join(parts) or "none"


def _augmentation(data) -> str:
    parts = []
    for step in data.augmentation:
        s = step.model_dump()
        if s["type"] == "random_resized_crop":
            parts.append(f"random_resized_crop {s['height']} (area {_number(s['area'][0])}-"
                         f"{_number(s['area'][1])}, {s['method']}; evaluation: centre "
                         f"{_number(s['eval_crop_fraction'])})")
        elif s["type"] == "lighting":
            parts.append(f"lighting {_number(s['alphastd'])}")
        else:
            parts.append(s["type"])
    return ", ".join(parts)


def _distillation(stage) -> str:
    if stage is None or stage.distill is None:
        return "none"
    d = stage.distill
    teachers = " + ".join(Path(t.model).name + (f" x {_number(t.weight)}"
                                                if t.weight != 1 else "")
                          for t in d.teachers)
    text = (f"from {teachers}: labels {_number(d.label_weight)}, soft targets "
            f"{_number(d.kd_weight)} at T {_number(d.temperature)}")
    if d.attention:
        text += (f", attention {_number(d.attention_weight)} ({d.attention_form}) on "
                 f"{len(d.attention)} layers")
    return text


def describe(checked) -> list[dict[str, str]]:
    """One row per stage (one for a single-stage recipe), as the table writes it."""
    stages = checked.stages or [None]
    rows = []
    for stage in stages:
        spec = (stage.checked if stage else checked).spec
        optimizer, schedule = _optimizers(spec)
        rows.append({
            "stage": stage.name if stage else "(one)",
            "optimizer": optimizer, "learning rate": schedule,
            "epochs": str(spec.training.epochs), "batch": str(spec.training.batch_size),
            "weight decay": _weight_decay(spec), "augmentation": _augmentation(spec.data),
            "distillation": _distillation(stage),
            "starts from": "fresh weights" if stage is None or stage.index == 0
            else {"best": "the best checkpoint before", "last": "the last checkpoint before",
                  "none": "fresh weights"}[stage.start],
        })
    return rows


def read_table() -> dict[tuple[str, str], dict[str, str]]:
    """docs/recipes.md's table: (recipe file, stage) -> column -> cell."""
    text = TABLE.read_text()
    start = text.index("| recipe |")
    lines = text[start:text.index("\n\n", start)].splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    table = {}
    for line in lines[2:]:
        cells = [c.strip().replace("`", "") for c in line.strip().strip("|").split("|")]
        row = dict(zip(header, cells, strict=True))
        table[(row["recipe"], row["stage"])] = row
    return table


@pytest.fixture(scope="module")
def checked_recipes(tmp_path_factory):
    folder = tmp_path_factory.mktemp("recipes")
    teacher = standin_teacher(folder)
    found = {}
    from bnn_cli.assemble.check import check

    with dataset_for("imagenet2012", folder) as data_dir:
        for recipe in RECIPES:
            found[recipe.stem] = check(recipe, teacher_overrides(recipe, teacher),
                                       data_dir=data_dir)
    return found


def test_every_recipe_checks_against_a_mock_imagenet(checked_recipes):
    for name, checked in checked_recipes.items():
        assert checked.data is not None, name  # the data section was checked
        assert checked.data.num_classes == 1000
        assert checked.data.split_sizes == {"train": 1281167, "validation": 50000}
        assert tuple(checked.final.data.input_shape) == (224, 224, 3)


def test_the_table_equals_the_resolved_configs_key_by_key(checked_recipes):
    table = read_table()
    wanted = {(f"imagenet/{name}.yaml", row["stage"]): row
              for name, checked in checked_recipes.items() for row in describe(checked)}
    assert sorted(table) == sorted(wanted)
    for key, row in wanted.items():
        for column in COMPARED:
            assert table[key][column] == row[column], (key, column)
    for key, row in table.items():  # every recipe's last stage gives its published top-1
        assert re.fullmatch(r"[\d.]+ %|", row["published top-1"]), key


def test_reactnet_a_has_the_papers_operation_counts(checked_recipes):
    """Liu et al. (ECCV 2020), ReActNet-A: BOPs 4.82e9, FLOPs 0.12e8, OPs = BOPs / 64 +
    FLOPs = 0.87e8 (the figures liuzechun/ReActNet's README and issue #19 give; FLOPs
    count the first convolution and the classifier)."""
    binary, real = _macs(checked_recipes["reactnet_a"])
    assert round(binary / 1e9, 2) == 4.82
    assert round(real / 1e8, 2) == 0.12
    assert round((binary / 64 + real) / 1e8, 2) == 0.87


def _macs(checked) -> tuple[int, int]:
    from bnn_cli.assemble.model import build_model
    from bnn_cli.models import summary_data

    data = summary_data(build_model(checked.final))
    return data.macs_by_precision[1], data.macs_by_precision[32]


def test_bnext_t_is_not_written_and_the_table_says_why():
    """BNext-T needs what bnn lacks (a learned convex mix per channel, a kernel
    binarizer annealed by epoch, RandAugment, teachers weighted per example): the
    table's notes say so rather than shipping a config that is not BNext."""
    assert not (FOLDER / "bnext_t.yaml").exists()
    text = TABLE.read_text()
    for missing in ("RandAugment", "annealed", "per example"):
        assert missing in text.split("## BNext-T")[1]


# ---------------------------------------------------------------------------------------
# Slow tier: every stage trains a few steps at 64x64 on mock ImageNet
# ---------------------------------------------------------------------------------------

SMALL = ["model.inputs[0].shape=[64, 64, 3]", "data.augmentation[0].height=64",
         "data.augmentation[0].width=64", "training.epochs=1",
         "training.steps_per_epoch=2", "training.batch_size=4",
         "data.train_split=train[:8]", "data.validation_split=train[8:12]",
         "data.test_split=validation[:4]"]


def _train(recipe: Path, folder: Path, data_dir: str, teacher: Path, *extra: str) -> int:
    return main(["train", str(recipe), *SMALL, *teacher_overrides(recipe, teacher),
                 *extra, "--data-dir", data_dir, "--output", str(folder / "runs")])


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES, ids=[p.stem for p in RECIPES])
def test_every_stage_trains_a_few_steps_at_64x64(recipe, tmp_path):
    teacher = standin_teacher(tmp_path, 64)
    with dataset_for("imagenet2012", tmp_path) as data_dir:
        assert _train(recipe, tmp_path, data_dir, teacher) == 0
    (run,) = (tmp_path / "runs").iterdir()
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and "test" in info
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    from bnn_cli.config.source import load_config_document

    stages = [s["name"] for s in load_config_document(recipe).data.get("stages") or []]
    assert [r.get("stage") for r in rows] == (stages or [None])


@pytest.mark.slow
def test_a_recipe_exports_to_the_larq_compute_engine(tmp_path, capsys):
    pytest.importorskip("larq_compute_engine", reason="the optional larq-compute-engine "
                                                      "package is not installed")
    recipe = FOLDER / "quicknet_small.yaml"
    with dataset_for("imagenet2012", tmp_path) as data_dir:
        assert _train(recipe, tmp_path, data_dir, standin_teacher(tmp_path, 64)) == 0
        (run,) = (tmp_path / "runs").iterdir()
        capsys.readouterr()
        assert main(["export", str(run), "--format", "lce", "--json",
                     "--data-dir", data_dir]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["top1_agreement"] == 1.0 and report["max_prob_diff"] < 1e-4
    assert b"LceBconv2d" in Path(report["path"]).read_bytes()


def _train_then_hang(recipe: str, folder: str, data_dir: str, teacher: str,
                     hang_after: int) -> None:
    """In a child process: train under mock ImageNet, hanging after epoch
    ``hang_after``'s checkpoint is saved (so the parent can SIGKILL it there)."""
    import time

    import tensorflow_datasets as tfds

    from bnn_cli.training import callbacks

    original = callbacks._save_checkpoint

    def save_then_hang(job, state, improved):
        original(job, state, improved)
        if state.epoch == hang_after:
            time.sleep(600)

    callbacks._save_checkpoint = save_then_hang
    with tfds.testing.mock_data(num_examples=16, data_dir=data_dir):
        _train(Path(recipe), Path(folder), data_dir, Path(teacher), "training.epochs=2")


@pytest.mark.slow
def test_a_two_step_recipe_resumes_after_a_kill_inside_its_second_step(tmp_path):
    """ReActNet-A, two steps of 2 epochs: SIGKILLed after epoch 3 (inside step 2, which
    started from step 1's last checkpoint), `--resume` finishes step 2 alone."""
    import multiprocessing
    import os
    import signal
    import time

    recipe = FOLDER / "reactnet_a.yaml"
    teacher = standin_teacher(tmp_path, 64)
    with dataset_for("imagenet2012", tmp_path) as data_dir:
        child = multiprocessing.get_context("spawn").Process(
            target=_train_then_hang, args=(str(recipe), str(tmp_path), data_dir,
                                           str(teacher), 3))
        child.start()
        metrics = None
        for _ in range(1200):  # until epoch 3's row is written
            runs = list((tmp_path / "runs").glob("*/metrics.jsonl"))
            if runs and len(runs[0].read_text().splitlines()) >= 3:
                metrics = runs[0]
                break
            assert child.is_alive(), "the child ended before it was killed"
            time.sleep(0.5)
        assert metrics is not None
        time.sleep(1)
        os.kill(child.pid, signal.SIGKILL)
        child.join()
        run = metrics.parent
        assert json.loads((run / "run.json").read_text())["status"] != "completed"
        assert main(["train", "--resume", str(run), "--data-dir", data_dir]) == 0
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert [(r["epoch"], r["stage"]) for r in rows] == [
        (1, "binary_activations"), (2, "binary_activations"),
        (3, "binary_weights"), (4, "binary_weights")]
    info = json.loads((run / "run.json").read_text())
    assert info["status"] == "completed" and "test" in info
