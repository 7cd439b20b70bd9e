"""Run directories from elsewhere: the plugins they name, and ones that cannot be written.

``bnn eval RUN`` and ``bnn train --resume RUN`` check the run's stored config, which
imports the plugins that config.yaml and overrides.json name: a copied run directory
could run any code that way. Here each test copies a tiny quickstart run and makes it
name a plugin whose import writes a marker file; without ``--trust-plugins`` the run is
refused (naming the file and the flag) and the marker never appears; with it, it works.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import sys
from pathlib import Path

import pytest
from conftest import QUICKSTART, train_tiny

from bnn_cli.cli import main
from bnn_cli.rundir import run as runs
from bnn_cli.training import evaluation


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    return train_tiny(tmp_path_factory.mktemp("runs"))


@pytest.fixture
def copied(finished_run, tmp_path) -> Path:
    """A copy of the finished run, as a run directory from elsewhere would arrive."""
    return Path(shutil.copytree(finished_run, tmp_path / "run"))


def _name_plugin(run: Path, where: str, folder: Path) -> tuple[Path, Path]:
    """Make ``run`` name a new plugin (in config.yaml or in overrides.json) whose import
    writes a marker; (plugin, marker). Each plugin file is new, so it was never imported."""
    marker, plugin = folder / "marker", folder / f"plugin_in_{where}.py"
    plugin.write_text(f"open({str(marker)!r}, 'w').write('imported')\n")
    if where == "config":
        with (run / "config.yaml").open("a") as f:
            f.write(f"\nplugins: [{str(plugin)!r}]\n")
    else:
        extras = json.loads((run / "overrides.json").read_text())
        (run / "overrides.json").write_text(json.dumps({**extras, "plugins": [str(plugin)]}))
    return plugin, marker


def _run(capsys, *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


def _refused(code: int, err: str, plugin: Path, marker: Path) -> None:
    assert code == 2, err
    assert f"names plugins that evaluating or resuming it imports, which runs their code: " \
           f"{plugin}" in err
    assert "--trust-plugins" in err and "Traceback" not in err
    assert not marker.exists(), "the plugin was imported"


@pytest.mark.parametrize("where", ["config", "overrides"])
def test_eval_imports_a_runs_plugins_only_when_trusted(copied, tmp_path, capsys, where):
    plugin, marker = _name_plugin(copied, where, tmp_path)
    code, _, err = _run(capsys, "eval", str(copied))
    _refused(code, err, plugin, marker)
    code, _, err = _run(capsys, "eval", str(copied / "model.keras"))  # the run's config too
    _refused(code, err, plugin, marker)
    code, out, err = _run(capsys, "eval", str(copied), "--trust-plugins", "--json")
    assert code == 0, err
    assert marker.read_text() == "imported"
    assert set(json.loads(out)["metrics"]) == {"loss", "accuracy"}


@pytest.mark.parametrize("where", ["config", "overrides"])
def test_resume_imports_a_runs_plugins_only_when_trusted(copied, tmp_path, capsys, where):
    plugin, marker = _name_plugin(copied, where, tmp_path)
    status = json.loads((copied / "run.json").read_text())
    (copied / "run.json").write_text(json.dumps({**status, "status": "interrupted"}))
    before = (copied / "run.json").read_bytes()
    code, _, err = _run(capsys, "train", "--resume", str(copied))
    _refused(code, err, plugin, marker)
    assert (copied / "run.json").read_bytes() == before  # refused before anything ran
    code, _, err = _run(capsys, "train", "--resume", str(copied), "--trust-plugins")
    assert code == 0, err
    assert marker.read_text() == "imported"
    assert json.loads((copied / "run.json").read_text())["status"] == "completed"


def test_eval_with_a_config_of_ones_own_leaves_the_runs_plugins_alone(copied, tmp_path,
                                                                      capsys):
    """The given config builds the model; the run's (for how its best checkpoint was
    chosen) is read without importing the plugins it names."""
    _, marker = _name_plugin(copied, "config", tmp_path)
    code, out, err = _run(capsys, "eval", str(copied), "--config", str(QUICKSTART), "--json")
    assert code == 0, err
    assert not marker.exists()
    assert json.loads(out)["selected_on"]["monitor"] == "val_accuracy"


# ---------------------------------------------------------------------------------------
# A run directory that cannot be written
# ---------------------------------------------------------------------------------------


@pytest.fixture
def read_only(copied, monkeypatch) -> Path:
    """``copied``, read-only. Root writes anyway: then the writer fails as it does on a
    read-only folder (EACCES), for this run only."""
    copied.chmod(stat.S_IRUSR | stat.S_IXUSR)
    if os.access(copied, os.W_OK):  # root
        real = evaluation.atomic_write_json

        def refuse(path, obj) -> None:
            if Path(path).parent != copied:
                return real(path, obj)
            try:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))
            except OSError as exc:
                raise runs._write_error(Path(path), exc) from None

        monkeypatch.setattr(evaluation, "atomic_write_json", refuse)
    yield copied
    copied.chmod(stat.S_IRWXU)


@pytest.mark.parametrize("json_", [False, True])
def test_eval_of_a_read_only_run_prints_the_result_then_warns(read_only, capsys, monkeypatch,
                                                              json_):
    report = read_only / "eval-test-epoch-0001.json"  # (the training's test evaluation)
    kept = report.read_bytes()
    monkeypatch.setattr(sys, "stderr", sys.stdout)  # one stream: the order is visible
    code, out, _ = _run(capsys, "eval", str(read_only), *(["--json"] if json_ else []))
    assert code == 0, out
    result, warning = out.split("warning: could not write ")
    assert "accuracy" in result and "loss" in result  # the result, first
    if json_:
        assert set(json.loads(result)["metrics"]) == {"loss", "accuracy"}
    assert warning == f"{report} (Permission denied); the result above is not saved\n"
    assert report.read_bytes() == kept
