"""``extends:``: a config written as changes to another; every value located in the file
that wrote it; a run directory keeps the merged config, so it outlives the base file."""

import shutil

import pytest
from conftest import QUICKSTART, TINY

from bnn_cli.assemble.check import check
from bnn_cli.cli import main


@pytest.fixture
def base(tmp_path):
    path = tmp_path / "base.yaml"
    shutil.copy(QUICKSTART, path)
    return path


def test_mappings_merge_and_other_values_replace(base, tmp_path):
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\n"
                     "training: {epochs: 3}\n"
                     "data: {preprocessing: [{type: rescale, range: [0, 1]}]}\n")
    spec = check(child).spec
    assert spec.name == "child" and spec.training.epochs == 3
    assert spec.training.batch_size == 32 and spec.training.optimizer.type == "Adam"
    assert [(s.type, tuple(s.range)) for s in spec.data.preprocessing] == [("rescale", (0.0, 1.0))]
    assert spec.data.dataset == "sklearn_digits" and len(spec.model.layers) == 14
    assert spec.extends is None  # (resolved when read)


def test_chains_resolve_relative_to_each_file(base, tmp_path):
    (tmp_path / "sub").mkdir()
    middle = tmp_path / "sub" / "middle.yaml"
    middle.write_text("extends: ../base.yaml\ntraining: {epochs: 4, batch_size: 8}\n")
    top = tmp_path / "top.yaml"
    top.write_text("extends: sub/middle.yaml\ntraining: {epochs: 5}\n")
    training = check(top).spec.training
    assert (training.epochs, training.batch_size) == (5, 8)


def _error(capsys, config) -> str:
    capsys.readouterr()
    assert main(["check", str(config)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err


def test_errors_name_the_file_that_wrote_the_value(base, tmp_path, capsys):
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\n\ntraining:\n  optimizer: {type: Adamm}\n")
    assert f"{child}:4:" in _error(capsys, child)
    base.write_text(base.read_text().replace("type: Adam}", "type: Adamm}"))
    child.write_text("extends: base.yaml\n")
    err = _error(capsys, child)
    line = next(i for i, x in enumerate(base.read_text().splitlines(), 1) if "Adamm" in x)
    assert f"{base}:{line}:" in err and "did you mean 'Adam'" in err


@pytest.mark.parametrize(("text", "message"), [
    ("extends: missing.yaml\n", "missing.yaml: no such file"),
    ("extends: [a.yaml]\n", "extends: names the config file"),
    ("extends: child.yaml\n", "extend each other in a circle"),
])
def test_bad_extends(tmp_path, capsys, text, message):
    child = tmp_path / "child.yaml"
    child.write_text(text)
    err = _error(capsys, child)
    assert message in err and f"{child}:1:" in err


def test_a_run_keeps_the_merged_config(base, tmp_path, capsys):
    child = tmp_path / "child.yaml"
    child.write_text("extends: base.yaml\nname: child\n")
    out = tmp_path / "runs"
    assert main(["train", str(child), *TINY, "--output", str(out)]) == 0
    (run,) = list(out.iterdir())
    stored = (run / "config.yaml").read_text()
    assert "extends" not in stored.split("\n", 1)[1] and "QuantConv2D" in stored
    base.unlink()  # the run no longer needs it
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0
