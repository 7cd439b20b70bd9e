"""Pictures are real PNGs with the content asked for."""

from __future__ import annotations

from bnn_cli.cli import main
from bnn_cli.plots import plot_history

PNG = b"\x89PNG\r\n\x1a\n"


def test_quantizer_plot(tmp_path, capsys):
    out = tmp_path / "q.png"
    assert main(["plot-quantizers", "-o", str(out)]) == 0
    assert out.read_bytes().startswith(PNG)
    err = capsys.readouterr().err
    assert "SteSign" in err and "NoOp" not in err  # NoOp needs a precision: not drawn


def test_history_plot(tmp_path):
    out = tmp_path / "curves.png"
    history = [{"epoch": e, "loss": 1 / e, "accuracy": 0.5 + e / 10, "val_loss": 1.1 / e,
                "val_accuracy": 0.5, "learning_rate": 0.01, "seconds": 1.0}
               for e in range(1, 4)]
    plot_history(history, out, title="t")
    assert out.read_bytes().startswith(PNG)
    assert out.stat().st_size > 5000
