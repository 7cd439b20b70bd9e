"""Pictures: training curves of a run, and each quantizer's forward value and
pseudo-gradient. Matplotlib is imported only here, and only when a picture is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnn_cli.config.monitor import best_epochs, guess_mode
from bnn_cli.rundir.run import atomic_write_bytes


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    atomic_write_bytes(path, buffer.getvalue())


_NOT_CURVES = ("epoch", "seconds", "learning_rate", "stage")
FLIP_PREFIX = "flip_ratio/"


def curve_keys(history: list[dict[str, Any]]) -> list[str]:
    """The training metrics a history logged (each drawn with its ``val_`` twin), in the
    order they were logged; flip ratios and the learning rate have their own panels."""
    columns = list(dict.fromkeys(k for row in history for k in row))
    return [k for k in columns if k not in _NOT_CURVES and not k.startswith("val_")
            and not k.startswith(FLIP_PREFIX)]


def _logged(history: list[dict[str, Any]], key: str) -> bool:
    return any(isinstance(row.get(key), (int, float)) for row in history)


def _grid(plt: Any, n: int, *, width: float = 4.5, height: float = 3.4,
          max_cols: int = 3) -> tuple[Any, list[Any]]:
    """A figure with ``n`` panels in rows of at most ``max_cols`` (unused ones hidden)."""
    import math

    cols = max(1, min(max_cols, n))
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols, height * rows),
                             squeeze=False)
    flat = [ax for row in axes for ax in row]
    for ax in flat[n:]:
        ax.set_visible(False)
    return fig, flat[:n]


def _epoch_axis(ax: Any) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.grid(alpha=0.3)


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str = "",
                 monitor: str | None = None, mode: str | None = None) -> None:
    """A run's curves: loss and every other metric per epoch (training solid, validation
    dashed), the flip ratios and the learning rate where logged, whole-number epochs, and
    the best epoch of ``monitor`` marked (default: val_accuracy, else val_loss)."""
    plt = _pyplot()
    keys = curve_keys(history)
    flips = [k for k in dict.fromkeys(k for row in history for k in row)
             if k.startswith(FLIP_PREFIX)]
    panels = [*keys, *(["flip ratio"] if flips else []),
              *(["learning rate"] if _logged(history, "learning_rate") else [])]
    fig, axes = _grid(plt, len(panels))
    epochs = [row["epoch"] for row in history]
    if monitor is None:
        columns = {k for row in history for k in row}
        monitor = next((m for m in ("val_accuracy", "val_loss", "loss") if m in columns), None)
    best = best_epochs(history, monitor, mode or guess_mode(monitor)) if monitor else []
    for ax, panel in zip(axes, panels, strict=True):
        if panel == "flip ratio":
            for key in flips:
                ax.plot(epochs, [row.get(key, float("nan")) for row in history], marker=".",
                        label=key[len(FLIP_PREFIX):])
            ax.set_title("flip ratio (share of binary weights that flipped)")
            ax.legend(fontsize=7)
        elif panel == "learning rate":
            ax.plot(epochs, [row.get("learning_rate", float("nan")) for row in history],
                    marker=".", color="tab:green")
            ax.set_title("learning rate")
        else:
            ax.plot(epochs, [row.get(panel, float("nan")) for row in history], marker=".",
                    label="train")
            if _logged(history, f"val_{panel}"):
                ax.plot(epochs, [row.get(f"val_{panel}", float("nan")) for row in history],
                        "--", marker=".", label="validation")
            ax.set_title(panel)
            ax.legend()
        _epoch_axis(ax)
        _mark_stages(ax, history)
        for i, epoch in enumerate(best):
            ax.axvline(epoch, color="tab:red", linestyle=":", linewidth=1, alpha=0.7)
            if panel in (monitor, (monitor or "").removeprefix("val_")):
                value = next(row[monitor] for row in history if row["epoch"] == epoch)
                ax.plot([epoch], [value], "*", color="tab:red", markersize=12,
                        label=f"best {monitor}" if i == 0 else None)
                ax.legend()
    fig.suptitle(title + (f" (best {monitor}: epoch {', '.join(map(str, best))})"
                          if best else ""))
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_compare(runs: list[dict[str, Any]], path: str | Path) -> None:
    """Several runs' curves on shared axes: each run one colour (training solid,
    validation dashed), a panel per metric and the learning rate, best epochs starred.
    ``runs``: dicts with ``label``, ``history``, ``monitor`` and ``mode``."""
    plt = _pyplot()
    keys = list(dict.fromkeys(k for run in runs for k in curve_keys(run["history"])))
    lr = any(_logged(run["history"], "learning_rate") for run in runs)
    panels = [*keys, *(["learning rate"] if lr else [])]
    if not panels:
        raise ValueError("the runs logged no epoch yet")
    fig, axes = _grid(plt, len(panels))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, panel in zip(axes, panels, strict=True):
        for i, run in enumerate(runs):
            history, colour = run["history"], colours[i % len(colours)]
            epochs = [row["epoch"] for row in history]
            key = "learning_rate" if panel == "learning rate" else panel
            if _logged(history, key):
                ax.plot(epochs, [row.get(key, float("nan")) for row in history], marker=".",
                        color=colour, label=run["label"])
            if panel != "learning rate" and _logged(history, f"val_{panel}"):
                ax.plot(epochs, [row.get(f"val_{panel}", float("nan")) for row in history],
                        "--", marker=".", color=colour,
                        label=None if _logged(history, key) else run["label"])
            monitor = run.get("monitor")
            if monitor and panel in (monitor, monitor.removeprefix("val_")):
                for epoch in best_epochs(history, monitor, run.get("mode") or
                                         guess_mode(monitor)):
                    value = next(row[monitor] for row in history if row["epoch"] == epoch)
                    ax.plot([epoch], [value], "*", color=colour, markersize=12)
        ax.set_title(panel + ("" if panel == "learning rate" else
                              "  (train solid, validation dashed)"), fontsize=9)
        _epoch_axis(ax)
    axes[0].legend(fontsize=7)
    fig.suptitle("compare: " + ", ".join(run["label"] for run in runs)[:150], fontsize=9)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def plot_sweep(rows: list[dict[str, Any]], axes_spec: list[dict[str, Any]], monitor: str,
               mode: str, path: str | Path, title: str = "") -> None:
    """A sweep's monitored metric against each swept key, one panel per key (a log axis
    for loguniform ranges, categories in order for listed values): completed trials
    filled, pruned ones hollow (their best epoch before the stop), the best starred."""
    import yaml

    plt = _pyplot()
    fig, axes = _grid(plt, len(axes_spec), width=4.8, height=3.6)
    scored = [r for r in rows if isinstance(r.get("value"), (int, float))
              and r["value"] == r["value"]]
    done = [r for r in scored if r["state"] == "completed"]
    pick = max if mode == "max" else min
    best = pick(done, key=lambda r: r["value"]) if done else None
    failed = sum(r["state"] == "failed" for r in rows)
    for ax, spec in zip(axes, axes_spec, strict=True):
        key = spec["key"]
        if spec["numeric"]:
            def x_of(row, key=key):
                value = yaml.safe_load(str(row["params"][key]))
                return float(value)
        else:
            order = spec.get("values") or sorted({str(r["params"][key]) for r in rows})

            def x_of(row, key=key, order=order):
                return order.index(str(row["params"][key]))
            ax.set_xticks(range(len(order)), order, rotation=20, fontsize=8)
        for state, style in (("completed", {"color": "tab:blue"}),
                             ("pruned", {"facecolors": "none", "edgecolors": "tab:gray"}),
                             ("interrupted", {"facecolors": "none",
                                              "edgecolors": "tab:orange"})):
            some = [r for r in scored if r["state"] == state and key in r["params"]]
            if some:
                ax.scatter([x_of(r) for r in some], [r["value"] for r in some], s=40,
                           label=state, **style)
        if best is not None:
            ax.plot([x_of(best)], [best["value"]], "*", color="tab:red", markersize=15,
                    label=f"best (trial {best['trial']})")
        xs = [x_of(r) for r in scored if key in r["params"]] if spec["numeric"] else []
        if spec.get("log") or (xs and min(xs) > 0 and max(xs) / min(xs) >= 10):
            ax.set_xscale("log")  # (loguniform, or listed values over decades)
        ax.set_xlabel(key)
        ax.set_ylabel(f"best {monitor}")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(f"{title}: {len(rows)} trials, {monitor} ({mode})"
                 + (f", {failed} failed (not drawn)" if failed else ""), fontsize=10)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)


def _mark_stages(ax: Any, history: list[dict[str, Any]]) -> None:
    """A line where each stage of a multi-stage run begins, labelled with its name."""
    previous = None
    for row in history:
        stage = row.get("stage")
        if stage is not None and stage != previous:
            if previous is not None:
                ax.axvline(row["epoch"] - 0.5, color="gray", linestyle=":", linewidth=1)
            ax.text(row["epoch"] - 0.4, 1.0, stage, transform=ax.get_xaxis_transform(),
                    fontsize=7, color="gray", va="top")
            previous = stage


def plot_quantizers(path: str | Path, names: list[str] | None = None) -> list[str]:
    """Forward value and pseudo-gradient of registered quantizers on [-2, 2]."""
    from bnn_cli import quantizers  # (lazy: the other plots need no TF)
    from bnn_cli._keras import tf  # (lazy: the other plots need no TF)
    from bnn_cli.registry import REGISTRY  # (lazy: the other plots need no TF)

    entries = [e for e in REGISTRY.entries("quantizer")
               if (names is None or e.name in names) and not any(p.required for p in e.params)]
    plt = _pyplot()
    fig, axes = _grid(plt, len(entries), width=3.2, height=3.0, max_cols=4)
    # One channel of 801 values: per-channel quantizers (MagnitudeAwareSign) then
    # compute their scale over the whole curve, as over a weight tensor's inputs.
    x = tf.reshape(tf.linspace(-2.0, 2.0, 801), (-1, 1))
    for ax, entry in zip(axes, entries, strict=True):
        quantizer = quantizers.get(entry.name)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = quantizer(x)
        grad = tape.gradient(y, x)
        ax.plot(x.numpy()[:, 0], y.numpy()[:, 0], label="forward")
        ax.plot(x.numpy()[:, 0], grad.numpy()[:, 0], "--", label="pseudo-gradient")
        ax.set_title(entry.name)
        ax.grid(alpha=0.3)
    axes[0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return [e.name for e in entries]
