"""Pictures are real PNGs with the content asked for: the figures each plot function
builds (captured at bnn_cli.plots._save) hold the curves, starred best epochs, stage
marks and log axes the README promises."""

from __future__ import annotations

import pytest

from bnn_cli import plots
from bnn_cli.cli import main
from bnn_cli.plots import plot_compare, plot_history, plot_sweep

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def figures(monkeypatch) -> list:
    """Every figure a plot function saves (still written, as a PNG, too)."""
    saved = []
    original = plots._save

    def capture(fig, path):
        saved.append(fig)
        original(fig, path)

    monkeypatch.setattr(plots, "_save", capture)
    return saved


def _panels(fig) -> dict:
    return {ax.get_title(): ax for ax in fig.axes if ax.get_visible()}


def _stars(ax) -> list[tuple[float, float]]:
    return [(float(line.get_xdata()[0]), float(line.get_ydata()[0]))
            for line in ax.get_lines() if line.get_marker() == "*"]


def _vertical_lines(ax) -> list[float]:
    """x of the axvline marks (lines from the bottom to the top of the axes)."""
    return [float(line.get_xdata()[0]) for line in ax.get_lines()
            if list(line.get_ydata()) == [0, 1] and line.get_xdata()[0] == line.get_xdata()[1]]


def test_quantizer_plot(tmp_path, capsys, figures):
    out = tmp_path / "q.png"
    assert main(["plot-quantizers", "-o", str(out)]) == 0
    assert out.read_bytes().startswith(PNG)
    err = capsys.readouterr().err
    assert "SteSign" in err and "NoOp" not in err  # NoOp needs a precision: not drawn
    (fig,) = figures
    panels = _panels(fig)
    assert "SteSign" in panels and "NoOp" not in panels
    forward, gradient = panels["SteSign"].get_lines()[:2]
    x, y = forward.get_xdata(), forward.get_ydata()
    assert x.min() == -2.0 and x.max() == 2.0
    assert set(y[x < 0]) == {-1.0} and set(y[x > 0]) == {1.0}  # the sign
    g = gradient.get_ydata()
    assert set(g[abs(x) < 0.99]) == {1.0} and set(g[abs(x) > 1.01]) == {0.0}  # the STE's clip


# A two-stage history; val_accuracy peaks at epoch 2 in stage "a" and epoch 4 in "b".
HISTORY = [
    {"epoch": 1, "stage": "a", "loss": 2.0, "accuracy": 0.3, "val_loss": 2.1,
     "val_accuracy": 0.40, "learning_rate": 0.01, "seconds": 1.0},
    {"epoch": 2, "stage": "a", "loss": 1.5, "accuracy": 0.5, "val_loss": 1.6,
     "val_accuracy": 0.60, "learning_rate": 0.005, "seconds": 1.0},
    {"epoch": 3, "stage": "b", "loss": 1.2, "accuracy": 0.6, "val_loss": 1.9,
     "val_accuracy": 0.55, "learning_rate": 0.01, "seconds": 1.0},
    {"epoch": 4, "stage": "b", "loss": 1.0, "accuracy": 0.7, "val_loss": 1.4,
     "val_accuracy": 0.70, "learning_rate": 0.005, "seconds": 1.0},
]


def test_history_plot(tmp_path, figures):
    out = tmp_path / "curves.png"
    plot_history(HISTORY, out, title="t")
    assert out.read_bytes().startswith(PNG)
    assert out.stat().st_size > 5000
    (fig,) = figures
    panels = _panels(fig)
    assert set(panels) == {"loss", "accuracy", "learning rate"}
    accuracy = panels["accuracy"]
    train, validation = accuracy.get_lines()[:2]
    assert list(train.get_ydata()) == [0.3, 0.5, 0.6, 0.7]
    assert list(validation.get_ydata()) == [0.40, 0.60, 0.55, 0.70]
    assert train.get_linestyle() == "-" and validation.get_linestyle() == "--"
    # The best epoch of each stage, starred on the monitored curve only.
    assert sorted(_stars(accuracy)) == [(2.0, 0.60), (4.0, 0.70)]
    assert _stars(panels["loss"]) == [] and _stars(panels["learning rate"]) == []
    assert "best val_accuracy: epoch 2, 4" in fig._suptitle.get_text()
    for ax in panels.values():
        marks = _vertical_lines(ax)
        assert 2.5 in marks  # where stage b begins
        assert {2.0, 4.0} <= set(marks)  # the best epochs
        assert [t.get_text() for t in ax.texts] == ["a", "b"]
        assert ax.get_xlabel() == "epoch"
        assert all(float(t).is_integer() for t in ax.get_xticks())  # whole-number epochs
    assert list(panels["learning rate"].get_lines()[0].get_ydata()) == [0.01, 0.005, 0.01,
                                                                        0.005]


def test_history_plot_of_a_loss_monitor_stars_the_lowest(tmp_path, figures):
    plot_history(HISTORY, tmp_path / "c.png", monitor="val_loss", mode="min")
    (fig,) = figures
    panels = _panels(fig)
    assert sorted(_stars(panels["loss"])) == [(2.0, 1.6), (4.0, 1.4)]
    assert _stars(panels["accuracy"]) == []


def test_compare_plot_stars_each_runs_best_epoch(tmp_path, figures):
    other = [{**row, "val_accuracy": 0.9 - 0.1 * row["epoch"], "stage": None}
             for row in HISTORY]
    plot_compare([{"label": "one", "history": HISTORY, "monitor": "val_accuracy",
                   "mode": "max"},
                  {"label": "two", "history": other, "monitor": "val_accuracy",
                   "mode": "max"}], tmp_path / "compare.png")
    (fig,) = figures
    panels = {ax.get_title().split("  ")[0]: ax for ax in fig.axes if ax.get_visible()}
    assert set(panels) == {"loss", "accuracy", "learning rate"}
    stars = _stars(panels["accuracy"])
    assert sorted(stars) == [(1.0, pytest.approx(0.8)), (2.0, 0.60), (4.0, 0.70)]
    colours = {line.get_color() for line in panels["accuracy"].get_lines()
               if line.get_marker() == "*"}
    assert len(colours) == 2  # each run in its own colour
    assert _stars(panels["loss"]) == []


ROWS = [
    {"trial": 1, "state": "completed", "value": 0.5, "params": {"lr": "0.0001", "opt": "Adam"}},
    {"trial": 2, "state": "completed", "value": 0.8, "params": {"lr": "0.01", "opt": "SGD"}},
    {"trial": 3, "state": "pruned", "value": 0.2, "params": {"lr": "0.001", "opt": "Adam"}},
    {"trial": 4, "state": "failed", "value": None, "params": {"lr": "0.1", "opt": "SGD"}},
]


def test_sweep_plot_log_axis_categories_and_the_best_starred(tmp_path, figures):
    axes = [{"key": "lr", "numeric": True, "log": True},
            {"key": "opt", "numeric": False, "values": ["Adam", "SGD"]}]
    plot_sweep(ROWS, axes, "val_accuracy", "max", tmp_path / "results.png", title="s")
    assert (tmp_path / "results.png").read_bytes().startswith(PNG)
    (fig,) = figures
    lr, opt = [ax for ax in fig.axes if ax.get_visible()]
    assert lr.get_xscale() == "log" and opt.get_xscale() == "linear"
    assert lr.get_xlabel() == "lr" and opt.get_xlabel() == "opt"
    assert [t.get_text() for t in opt.get_xticklabels()] == ["Adam", "SGD"]
    assert _stars(lr) == [(0.01, 0.8)] and _stars(opt) == [(1.0, 0.8)]  # trial 2
    # Completed filled, pruned hollow; the failed trial (no value) is not drawn.
    completed, pruned = lr.collections
    assert sorted(map(tuple, completed.get_offsets().tolist())) == [(0.0001, 0.5), (0.01, 0.8)]
    assert pruned.get_offsets().tolist() == [[0.001, 0.2]]
    assert len(pruned.get_facecolors()) == 0 or pruned.get_facecolors()[0][3] == 0
    assert "1 failed (not drawn)" in fig._suptitle.get_text()


def test_sweep_plot_uses_a_log_axis_for_values_over_decades(tmp_path, figures):
    axes = [{"key": "lr", "numeric": True}]
    plot_sweep(ROWS[:2], axes, "val_accuracy", "max", tmp_path / "a.png")
    plot_sweep([{**r, "params": {"lr": v}} for r, v in zip(ROWS[:2], ["1", "2"], strict=True)],
               axes, "val_accuracy", "max", tmp_path / "b.png")
    decades, narrow = (fig.axes[0] for fig in figures)
    assert decades.get_xscale() == "log" and narrow.get_xscale() == "linear"
