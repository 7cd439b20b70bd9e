"""What a newcomer meets first: typed, located messages for layer arguments, YAML
indentation and dataset names; commands that say what they take (benchmark-model on a
folder, list-layers NAME, --json as a flag); `bnn runs`' differs column; `bnn compare`
that never replaces a file it was not told to; a default monitor that follows the model.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import QUICKSTART, train_tiny

from bnn_cli import api
from bnn_cli.cli import main

TEXT = QUICKSTART.read_text(encoding="utf-8")

TWO_OUTPUTS = """\
name: two_outputs
model:
  layers:
    - {type: Flatten}
    - {type: Dense, units: 16, activation: relu, name: trunk}
    - {type: Dense, units: 10, activation: softmax, name: probs, inputs: trunk}
    - {type: Dense, units: 10, activation: softmax, name: aux, inputs: trunk}
  outputs: [probs, aux]
data:
  dataset: sklearn_digits
  train_split: "train[:90%]"
  validation_split: "train[90%:]"
  test_split: test
training:
  epochs: 1
  batch_size: 32
  metrics: [accuracy]
"""


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _line(path: Path, needle: str) -> int:
    return next(i for i, ln in enumerate(path.read_text().splitlines(), 1) if needle in ln)


def _error(capsys, argv: list[str]) -> str:
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.startswith("error: ")
    return err


# 1. Layer arguments of the wrong type -------------------------------------------------


def test_layer_arguments_of_the_wrong_type_are_located_and_typed(tmp_path, capsys):
    text = TEXT.replace("filters: 64, kernel_size: 3}", "filters: [64], kernel_size: 3}")
    text = text.replace("units: 256}", "units: [128, 64]}")
    text = text.replace("{type: BatchNormalization, momentum: 0.9, scale: false}\n    - "
                        "{type: QuantConv2D, filters: 64",
                        "{type: BatchNormalization, momentum: 0.9, scale: \"no\"}\n    - "
                        "{type: QuantConv2D, filters: 64", 1)
    config = _write(tmp_path, text)
    err = _error(capsys, ["check", str(config)])
    assert f"{config}:{_line(config, '[64]')}:" in err
    assert "model.layers[0].filters: expected an integer, got [64]" in err
    assert f"{config}:{_line(config, '[128, 64]')}:" in err
    assert "model.layers[9].units: expected an integer, got [128, 64]" in err
    assert "model.layers[1].scale: expected true or false, got 'no'" in err
    assert "not supported between" not in err and "int() argument" not in err


def test_right_types_and_lists_where_keras_takes_them_pass():
    report = api.check(QUICKSTART, "model.layers[0].kernel_size=[3, 3]",
                       "model.layers[1].axis=[-1]", "model.layers[3].pool_size=[2, 2]")
    assert report.checked.graph.nodes


# 2. YAML indentation -------------------------------------------------------------------


@pytest.mark.parametrize("mistake", ["over", "under", "no colon"])
def test_a_mis_indented_key_is_reported_at_its_own_line(mistake, tmp_path, capsys):
    lines = TEXT.splitlines()
    at = next(i for i, ln in enumerate(lines) if ln.strip() == "epochs: 20")
    if mistake == "over":  # the first key of training, one space too deep
        lines[at] = " " + lines[at]
    elif mistake == "under":
        at += 1  # batch_size, at the top level between training's keys
        lines[at] = lines[at].lstrip()
    else:
        lines[at] = "  epochs 20"
    config = _write(tmp_path, "\n".join(lines) + "\n")
    err = _error(capsys, ["check", str(config)])
    assert f"{config}:{at + 1}:" in err and "YAML syntax error" in err


# 3. Unknown dataset --------------------------------------------------------------------


def test_an_unknown_dataset_is_a_located_config_error(tmp_path, capsys):
    config = _write(tmp_path, TEXT.replace("dataset: sklearn_digits", "dataset: fashion_mnst"))
    err = _error(capsys, ["check", str(config)])
    line = _line(config, "fashion_mnst")
    assert (f"{config}:{line}:12: data.dataset: unknown dataset 'fashion_mnst'; did you "
            "mean 'fashion_mnist'?") in err


# 4. benchmark-model on a folder ----------------------------------------------------------


def test_benchmark_model_on_a_folder_says_what_it_takes(tmp_path, capsys):
    err = _error(capsys, ["benchmark-model", str(tmp_path)])
    assert "no such file" not in err and "is a folder" in err
    assert "bnn export" in err and str(tmp_path / "export" / "model.tflite") in err
    (tmp_path / "export").mkdir()
    for name in ("model.tflite", "model_lce.tflite"):
        (tmp_path / "export" / name).write_bytes(b"x")
    err = _error(capsys, ["benchmark-model", str(tmp_path)])
    assert str(tmp_path / "export" / "model_lce.tflite") in err
    assert str(tmp_path / "export" / "model.tflite") in err


# 5. list-layers NAME ---------------------------------------------------------------------


def test_list_layers_name_shows_one_in_full(capsys):
    assert main(["list-layers", "QuantConv2D"]) == 0
    out = capsys.readouterr().out
    assert "bias_constraint = None" in out and "filters (required)" in out
    assert "..." not in out and "summary:" in out and "aliases:" in out
    assert main(["list-quantizers", "ste_sign", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["name"] == "SteSign" or "ste_sign" in data["aliases"] + [data["name"]]
    err = _error(capsys, ["list-quantizers", "ste_sgn"])
    assert "did you mean 'ste_sign'?" in err
    err = _error(capsys, ["list-layers", "QuantConv2d"])
    assert "did you mean 'QuantConv2D'?" in err


def test_the_component_table_says_how_to_see_the_rest(capsys):
    assert main(["list-layers"]) == 0
    assert "bnn list-layers NAME" in capsys.readouterr().out


# 6. --json is a flag -----------------------------------------------------------------------


def test_json_is_a_flag_in_help_and_works(capsys):
    assert main(["check", "--help"]) == 0
    help_text = capsys.readouterr().out
    (line,) = [ln for ln in help_text.splitlines() if "--json" in ln]
    assert "<bool>" not in line and "Print one JSON object" in line
    assert main(["list-quantizers", "--json"]) == 0
    assert isinstance(json.loads(capsys.readouterr().out), list)


# 7 and 8. bnn runs' differs column; bnn compare's picture ------------------------------------


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory) -> tuple[Path, Path, Path]:
    root = tmp_path_factory.mktemp("newcomer_runs")
    a = train_tiny(root / "a")
    b = train_tiny(root / "b", "training.learning_rate.initial=0.003")
    both = root / "both"
    both.mkdir()
    return a.rename(both / a.name), b.rename(both / b.name), both


def test_runs_shows_what_differs_under_that_name(two_runs, capsys):
    a, b, both = two_runs
    assert main(["runs", str(both), "--json"]) == 0
    rows = {Path(r["path"]).name: r for r in json.loads(capsys.readouterr().out)["runs"]}
    assert rows[b.name]["differs"] == {"training.learning_rate.initial": "0.003"}
    assert all("overrides" not in r for r in rows.values())
    assert main(["runs", str(both)]) == 0
    out = capsys.readouterr().out
    assert "differs" in out and "overrides" not in out


def test_compare_without_o_never_replaces_a_file(two_runs, tmp_path, monkeypatch, capsys):
    a, b, _ = two_runs
    monkeypatch.chdir(tmp_path)
    (tmp_path / "compare.png").write_bytes(b"mine")
    assert main(["compare", str(a), str(b)]) == 0
    assert (tmp_path / "compare.png").read_bytes() == b"mine"
    assert (tmp_path / "compare-2.png").read_bytes().startswith(b"\x89PNG")
    assert "wrote compare-2.png" in capsys.readouterr().out
    assert main(["compare", str(a), str(b), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["output"] == "compare-3.png"
    assert main(["compare", str(a), str(b), "-o", "compare.png"]) == 0  # named: replaced
    assert (tmp_path / "compare.png").read_bytes().startswith(b"\x89PNG")


# 9. The default monitor follows the model ---------------------------------------------------


def test_a_default_monitor_never_refuses_a_two_output_model(tmp_path, capsys):
    config = _write(tmp_path, TWO_OUTPUTS)
    assert main(["check", str(config)]) == 0
    out = capsys.readouterr().out
    assert "val_probs_accuracy" in out and "training.monitor is not set" in out
    report = api.check(config)
    assert report.checked.spec.training.monitor == "val_probs_accuracy"
    assert report.as_dict()["monitor_chosen"] is True
    # A monitor the config names is checked as before.
    err = _error(capsys, ["check", str(config), "training.monitor=val_accuracy"])
    assert "metric 'val_accuracy' is not logged" in err


def test_the_default_monitor_without_accuracy_or_validation(tmp_path):
    text = "\n".join(ln for ln in TEXT.splitlines() if "monitor:" not in ln) + "\n"
    config = _write(tmp_path, text)
    assert api.check(config, "training.metrics=[]").checked.spec.training.monitor \
        == "val_loss"
    checked = api.check(config, "data.validation_split=null").checked
    assert checked.spec.training.monitor == "loss" and checked.monitor_chosen == "loss"
    written = api.check(QUICKSTART)
    assert written.checked.monitor_chosen is None
    assert "training.monitor is not set" not in "\n".join(written.text)
