"""The error suite: one broken config per mistake, with the message and line a user sees.

Each file in tests/bad_configs/ states what it expects in its first lines:
``# expect-line: N`` (the line the message must point at) and ``# expect: TEXT``.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from bnn_cli.cli import main

BAD = Path(__file__).parent / "bad_configs"
CASES = sorted(p for p in BAD.glob("*.yaml") if p.stat().st_size > 0)


def _expectations(path: Path) -> tuple[int, str]:
    text = path.read_text()
    line = int(re.search(r"# expect-line: (\d+)", text).group(1))
    message = re.search(r"# expect: (.+)", text).group(1).strip()
    return line, message


def run_cli(capsys, *args: str) -> tuple[int, str, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_bad_config_is_reported_with_file_line_and_fix(path: Path, capsys, tmp_path,
                                                       monkeypatch):
    monkeypatch.chdir(tmp_path)  # anything a hostile config might write lands here
    line, message = _expectations(path)
    code, out, err = run_cli(capsys, "check", str(path))
    assert code == 2, err
    assert "Traceback" not in err + out
    assert message in err, err
    assert f"{path}:{line}:" in err, err
    assert not list(tmp_path.iterdir()), "a bad config must not create files"


def test_python_tag_never_executes(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, _ = run_cli(capsys, "check", str(BAD / "python_tag.yaml"))
    assert code == 2
    assert not (tmp_path / "PWNED_BY_YAML").exists()


def test_empty_file(capsys):
    code, _, err = run_cli(capsys, "check", str(BAD / "empty.yaml"))
    assert code == 2
    assert "empty.yaml: the file is empty" in err


def test_missing_file(capsys, tmp_path):
    code, _, err = run_cli(capsys, "check", str(tmp_path / "nope.yaml"))
    assert code == 2
    assert "nope.yaml: no such file" in err
    assert "Traceback" not in err


def test_many_errors_are_reported_together(capsys):
    code, _, err = run_cli(capsys, "check", str(BAD / "many_errors.yaml"))
    assert code == 2
    assert "unknown quantizer 'ste_sgn'" in err
    assert "unknown layer type 'Dnse'; did you mean 'Dense'" in err
    assert "training.epochs" in err


GOOD = """\
model:
  inputs: [{shape: [4]}]
  layers:
    - {type: QuantDense, units: 3, kernel_quantizer: ste_sign,
       kernel_constraint: weight_clip}
    - {type: Dense, units: 2}
"""


@pytest.mark.parametrize("override,expected", [
    ("model.layers[5].units=3", "model.layers[5] does not exist (the list has 2 items)"),
    ("model.nonsense.units=3", "model.nonsense does not exist"),
    ("training.epochs", "is not KEY.PATH=VALUE"),
    ("model.layers[0].kernel_quantizer=ste_sgn", "did you mean 'ste_sign'"),
    ("training.epochs=-1", "training.epochs: Input should be greater than or equal to 1"),
])
def test_bad_overrides(override, expected, capsys, tmp_path):
    config = tmp_path / "good.yaml"
    config.write_text(GOOD)
    code, _, err = run_cli(capsys, "check", str(config), override)
    assert code == 2, err
    assert expected in err
    assert "Traceback" not in err


def test_override_is_applied_and_reported_by_origin(capsys, tmp_path):
    config = tmp_path / "good.yaml"
    config.write_text(GOOD)
    code, out, err = run_cli(capsys, "check", str(config), "model.layers[1].units=7",
                             "--json")
    assert code == 0, err
    import json

    report = json.loads(out)
    assert report["output_shape"] == [7]
    assert report["total_params"] == (4 * 3 + 3) + (3 * 7 + 7)
