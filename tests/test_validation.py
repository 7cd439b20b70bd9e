"""Checking happens once, before anything is written, and building consumes what it made.

(The error text and line of each mistake are in tests/bad_configs/, run by
test_config_errors.py; here: the order of things in `bnn train`.)
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bnn_cli.assemble import check as checking
from bnn_cli.cli import main
from bnn_cli.config import checks, graph

QUICKSTART = Path(__file__).resolve().parents[1] / "configs" / "quickstart.yaml"
TINY = ["training.epochs=1", "training.steps_per_epoch=2", "training.batch_size=16"]


@pytest.mark.parametrize("override", [
    "training.monitor=val_acc",                     # looked at after epoch 1, before
    "training.early_stopping={monitor: val_los}",   # accepted and never read, before
    "training.optimizer={type: Adam, beta1: 0.9}",  # an argument Adam does not take
    "training.learning_rate=-1",
    "training.learning_rate=.inf",
    "name=_exp",                                    # failed in the first traced step
    "name=../../escape",                            # a run folder outside --output
    "model.layers[0].filters=1e3",                  # text, not a number
    "data.test_split=tset",                         # failed after the last epoch
])
def test_train_refuses_before_writing_anything(override, tmp_path, capsys):
    code = main(["train", str(QUICKSTART), *TINY, override, "--output", str(tmp_path / "runs")])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert override.split("=")[0] in err  # the key is named
    assert not (tmp_path / "runs").exists()


def test_train_expands_and_checks_the_model_once(tmp_path, monkeypatch):
    calls = {"expand": 0, "check": 0}
    expand, check = graph.expand, checking.check

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            calls[name] += 1
            return fn(*args, **kwargs)
        return wrapper

    monkeypatch.setattr(checks, "expand", counted("expand", expand))
    import bnn_cli.training.loop as training

    monkeypatch.setattr(training, "check", counted("check", check))
    code = main(["train", str(QUICKSTART), *TINY, "--output", str(tmp_path)])
    assert code == 0
    assert calls == {"expand": 1, "check": 1}


def test_two_unnamed_uses_of_a_block_get_their_own_names(tmp_path):
    from bnn_cli.assemble.model import build_model

    path = tmp_path / "blocks.yaml"
    path.write_text("""
model:
  inputs: [{shape: [4]}]
  blocks:
    fc: {layers: [{type: Dense, name: dense, units: 4}, {type: ReLU, name: act}]}
  layers:
    - {block: fc}
    - {block: fc}
    - {type: Dense, name: head, units: 2}
""")
    model = build_model(checking.check(path))
    assert [layer.name for layer in model.layers[1:]] == [
        "fc_dense", "fc_act", "fc_1_dense", "fc_1_act", "head"]
