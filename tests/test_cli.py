"""The command line: listings, check, schema, exit codes (in-process via `main`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import dataset_for

from bnn_cli.cli import main

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))
PLUGIN = Path(__file__).parent / "plugins" / "my_quantizers.py"


def run(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _commands() -> dict:
    """The app's commands, read from the Typer app (name -> click command)."""
    import typer

    from bnn_cli.cli import app

    return typer.main.get_command(app).commands


def test_help_lists_the_commands(capsys):
    commands = _commands()
    assert {"train", "eval", "check", "list-quantizers", "list-layers", "schema"} <= set(commands)
    code, out, _ = run(capsys, "--help")
    assert code == 0
    for name in commands:
        assert name in out, f"bnn --help does not list {name}"


def test_every_command_has_help_with_its_options(capsys):
    for name, command in _commands().items():
        code, out, err = run(capsys, name, "--help")
        assert code == 0, (name, err)
        assert "Traceback" not in out + err
        assert "Usage:" in out and name in out, name
        flags = [o for p in command.params if p.param_type_name == "option" for o in p.opts]
        assert "--help" in out
        for flag in flags:
            assert flag in out, f"bnn {name} --help does not show {flag}"


def test_console_script_runs_without_traceback():
    proc = subprocess.run([sys.executable, "-m", "bnn_cli.cli", "check", "nope.yaml"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: nope.yaml: no such file")
    assert "Traceback" not in proc.stderr


def test_list_quantizers_json_reads_the_registry(capsys):
    code, out, _ = run(capsys, "list-quantizers", "--json")
    assert code == 0
    entries = {e["name"]: e for e in json.loads(out)}
    assert set(entries) >= {"SteSign", "ApproxSign", "SwishSign", "SteHeaviside", "SteTern",
                            "DoReFa", "MagnitudeAwareSign", "NoOp"}
    assert entries["SteSign"]["aliases"] == ["ste_sign"]
    assert entries["SteSign"]["precision"] == 1
    params = {p["name"]: p for p in entries["SteTern"]["parameters"]}
    assert params["threshold_value"]["default"] == 0.05
    assert params["ternary_weight_networks"]["default"] is False
    assert {"name": "precision", "required": True} in entries["NoOp"]["parameters"]
    assert entries["DoReFa"]["aliases"] == ["dorefa_quantizer"]


def test_list_quantizers_table(capsys):
    code, out, _ = run(capsys, "list-quantizers")
    assert code == 0
    assert "ste_sign" in out and "magnitude_aware_sign" in out and "clip_value=1.0" in out


def test_custom_quantizer_is_listed_with_plugin(capsys):
    code, out, _ = run(capsys, "list-quantizers", "--json", "--plugin", str(PLUGIN))
    assert code == 0
    custom = next(e for e in json.loads(out) if e["name"] == "identity_sign")
    assert custom["builtin"] is False and custom["precision"] == 1
    code, out, _ = run(capsys, "list-layers", "--json", "--plugin", str(PLUGIN))
    names = {e["name"] for e in json.loads(out)}
    assert {"Scale", "QuantConv2D", "Dense", "BatchNormalization"} <= names


def test_unknown_plugin_is_a_user_error(capsys):
    code, _, err = run(capsys, "list-quantizers", "--plugin", "no/such/plugin.py")
    assert code == 2 and "plugin file 'no/such/plugin.py' not found" in err


@pytest.mark.parametrize("config", CONFIGS, ids=[c.stem for c in CONFIGS])
def test_every_shipped_config_checks(config, capsys, tmp_path):
    dataset = yaml.safe_load(config.read_text())["data"]["dataset"]
    with dataset_for(dataset, tmp_path) as data_dir:
        code, out, err = run(capsys, "check", str(config), "--json", "--data-dir", data_dir)
    assert code == 0, err
    report = json.loads(out)
    assert report["total_params"] > 0
    assert sum(report["params_by_bitwidth"].values()) == report["total_params"]
    if config.stem != "seed_dense":  # the seed network has no quantizers
        assert report["macs_by_precision"]["1"] > 0
    assert report["output_shape"] == [10]


def test_check_prints_a_summary(capsys, tmp_path):
    with dataset_for("mnist", tmp_path) as data_dir:
        code, out, _ = run(capsys, "check", str(ROOT / "configs" / "larq_mnist.yaml"),
                           "--data-dir", data_dir)
    assert code == 0
    assert "Total params" in out and "Number of MACs" in out and "OK" in out


def test_check_counts_larq_mnist_exactly(capsys, tmp_path):
    """Larq's MNIST example: 93,088 binary weights (3 convs, 2 dense) + 468 BN params."""
    with dataset_for("mnist", tmp_path) as data_dir:
        code, out, _ = run(capsys, "check", str(ROOT / "configs" / "larq_mnist.yaml"),
                           "--json", "--data-dir", data_dir)
    report = json.loads(out)
    binary = 3 * 3 * 1 * 32 + 3 * 3 * 32 * 64 + 3 * 3 * 64 * 64 + 576 * 64 + 64 * 10
    assert report["params_by_bitwidth"]["1"] == binary
    assert report["params_by_bitwidth"]["32"] == 2 * (32 + 64 + 64 + 64 + 10)


def test_config_plugins_make_custom_names_available(tmp_path, capsys):
    config = tmp_path / "custom.yaml"
    config.write_text(f"""\
plugins: [{PLUGIN}]
model:
  inputs: [{{shape: [4]}}]
  layers:
    - {{type: QuantDense, units: 3, input_quantizer: identity_sign,
       kernel_quantizer: identity_sign, kernel_constraint: weight_clip}}
    - {{type: Scale, factor: 0.5}}
""")
    code, out, err = run(capsys, "check", str(config), "--json")
    assert code == 0, err
    assert json.loads(out)["params_by_bitwidth"] == {"1": 12, "32": 3}


def test_schema_is_generated_from_the_validating_models(capsys, tmp_path):
    code, out, _ = run(capsys, "schema")
    assert code == 0
    schema = json.loads(out)
    assert set(schema["properties"]) >= {"model", "data", "training", "plugins", "name"}
    layer = schema["$defs"]["LayerSpec"]
    assert "QuantConv2D" in layer["properties"]["type"]["enum"]
    assert "ste_sign" in layer["properties"]["kernel_quantizer"]["oneOf"][0]["enum"]
    training = schema["$defs"]["TrainingConfig"]["properties"]
    assert training["epochs"]["minimum"] == 1
    out_file = tmp_path / "schema.json"
    assert main(["schema", "-o", str(out_file)]) == 0
    assert json.loads(out_file.read_text()) == schema


def test_usage_error_exit_code(capsys):
    code, _, err = run(capsys, "train")
    assert code == 2
    assert "Missing argument" in err
