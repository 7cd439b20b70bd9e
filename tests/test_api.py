"""The Python API under the CLI: configs as paths, YAML text or dicts; typed results;
one exception type carrying the CLI's located message."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

import bnn_cli
from bnn_cli.cli import main

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "configs" / "quickstart.yaml"
SHORT = ("training.epochs=2", "training.steps_per_epoch=4")


def _quickstart() -> dict:
    return yaml.safe_load(QUICKSTART.read_text())


def test_train_the_quickstart_from_a_dict(tmp_path):
    run = bnn_cli.train(_quickstart(), *SHORT, output=tmp_path)
    assert isinstance(run, bnn_cli.Run)
    assert (run.status, run.exit_code) == ("completed", 0)
    assert run.path.parent == tmp_path and run.path.name.startswith("quickstart-")
    assert [row["epoch"] for row in run.history] == [1, 2]
    record = json.loads((run.path / "run.json").read_text())
    assert run.best == record["best"] and run.best["epoch"] in (1, 2)
    assert run.test["metrics"] == record["test"]["metrics"]
    # The run keeps the config it was given (resumable without the dict).
    stored = yaml.safe_load((run.path / "config.yaml").read_text())
    assert stored["model"] == _quickstart()["model"]
    # Evaluating the run through the API gives the metrics the run recorded.
    report = bnn_cli.evaluate(run.path)
    assert report.split == "test"
    assert report.metrics["accuracy"] == pytest.approx(run.test["metrics"]["accuracy"])


def test_a_yaml_string_and_a_path_check_alike():
    from_path = bnn_cli.check(str(QUICKSTART))
    from_text = bnn_cli.check(QUICKSTART.read_text())
    assert from_text.summary.total_params == from_path.summary.total_params > 0
    assert from_text.checked.config.name == "quickstart"


def test_a_dict_error_names_the_key_path_not_a_temporary_file():
    config = _quickstart()
    config["training"]["epochs"] = [2]
    with pytest.raises(bnn_cli.UserError) as caught:
        bnn_cli.check(config)
    message = str(caught.value)
    assert message.startswith("<dict>: training.epochs:"), message
    assert "bnn-config-" not in message and ".yaml" not in message.split(":")[0]


def test_a_yaml_string_error_names_its_line():
    text = QUICKSTART.read_text().replace("epochs: 20", "epochs: -3")
    line = next(i for i, ln in enumerate(text.splitlines(), 1) if "epochs: -3" in ln)
    with pytest.raises(bnn_cli.UserError) as caught:
        bnn_cli.check(text)
    assert str(caught.value).startswith(f"<yaml>:{line}:"), str(caught.value)


def test_a_missing_file_is_a_user_error():
    with pytest.raises(bnn_cli.UserError, match="no such file"):
        bnn_cli.check("configs/no_such_config.yaml")


def test_the_cli_prints_what_the_api_returns(capsys):
    report = bnn_cli.check(QUICKSTART).as_dict()
    assert main(["check", str(QUICKSTART), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads(json.dumps(report, default=str))


SHARED_TFDS = ROOT.parent / "shared" / "tfds"


@pytest.mark.skipif(not (SHARED_TFDS / "mnist").is_dir(), reason="needs ../shared/tfds")
def test_a_run_remembers_its_data_dir(tmp_path, monkeypatch, capsys):
    """`bnn train C --data-dir D`, then `bnn eval RUN` without it: the run reads D again
    (a later --data-dir still wins)."""
    monkeypatch.setenv("TFDS_DATA_DIR", str(tmp_path / "elsewhere"))  # (not D)
    run = bnn_cli.train(QUICKSTART, *SHORT, "training.epochs=1", "data.dataset=mnist",
                        "data.train_split=train[:1%]", "data.validation_split=train[99%:]",
                        "data.test_split=test[:2%]", output=tmp_path,
                        data_dir=str(SHARED_TFDS))
    assert run.record.data_dir == str(SHARED_TFDS.resolve())
    report = bnn_cli.evaluate(run.path)
    assert report.metrics["accuracy"] == pytest.approx(run.test["metrics"]["accuracy"])
    with pytest.raises(bnn_cli.UserError, match="elsewhere"):
        bnn_cli.evaluate(run.path, data_dir=str(tmp_path / "elsewhere"))


def test_a_tie_on_the_monitor_is_broken_by_the_loss_and_reported(tmp_path, capsys):
    """The quickstart's 144 validation examples reach the same val_accuracy in several
    epochs: the checkpoint kept is the tied epoch with the lowest val_loss, and `bnn eval`
    says it was a tie."""
    from bnn_cli.config.monitor import tied_epochs

    run = bnn_cli.train(QUICKSTART, "training.epochs=8", output=tmp_path)
    best = run.best["epoch"]
    tied = tied_epochs(run.history, "val_accuracy", best)
    rows = {row["epoch"]: row for row in run.history}
    top = max(row["val_accuracy"] for row in run.history)
    assert rows[best]["val_accuracy"] == top
    assert rows[best]["val_loss"] == min(rows[e]["val_loss"] for e in [best, *tied])
    if not tied:
        pytest.skip("no tie on val_accuracy in this run (the rule above still held)")
    assert run.test["selected_on"]["tied_with"] == tied
    assert main(["eval", str(run.path)]) == 0
    out = capsys.readouterr().out
    assert "a tie" in out and "val_loss decided" in out, out


def test_a_dict_value_yaml_cannot_write_is_a_user_error():
    config = _quickstart()
    config["data"]["data_dir"] = Path("/tmp")
    with pytest.raises(bnn_cli.UserError, match=r"^<dict>: the config holds PosixPath"):
        bnn_cli.check(config)
