"""Pictures: training curves of a run, and each quantizer's forward value and
pseudo-gradient. Matplotlib is imported only here, and only when a picture is drawn."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnn_cli.runs import atomic_write_bytes


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


def plot_history(history: list[dict[str, Any]], path: str | Path, title: str = "") -> None:
    """Loss and every other metric per epoch (training solid, validation dashed)."""
    plt = _pyplot()
    # Every metric any epoch logged (a distilling stage logs its loss terms too).
    columns = list(dict.fromkeys(k for row in history for k in row))
    keys = [k for k in columns if k not in ("epoch", "seconds", "learning_rate", "stage")
            and not k.startswith("val_")]
    fig, axes = plt.subplots(1, len(keys), figsize=(4.5 * len(keys), 3.4), squeeze=False)
    epochs = [row["epoch"] for row in history]
    for ax, key in zip(axes[0], keys, strict=True):
        ax.plot(epochs, [row.get(key, float("nan")) for row in history], marker=".",
                label="train")
        if f"val_{key}" in columns:
            ax.plot(epochs, [row.get(f"val_{key}", float("nan")) for row in history], "--",
                    marker=".", label="validation")
        _mark_stages(ax, history)
        ax.set_xlabel("epoch")
        ax.set_title(key)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
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
    from bnn_cli import quantizers
    from bnn_cli._keras import tf
    from bnn_cli.registry import REGISTRY

    entries = [e for e in REGISTRY.entries("quantizer")
               if (names is None or e.name in names) and not any(p.required for p in e.params)]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(entries), figsize=(3.2 * len(entries), 3.0),
                             squeeze=False)
    # One channel of 801 values: per-channel quantizers (MagnitudeAwareSign) then
    # compute their scale over the whole curve, as over a weight tensor's inputs.
    x = tf.reshape(tf.linspace(-2.0, 2.0, 801), (-1, 1))
    for ax, entry in zip(axes[0], entries, strict=True):
        quantizer = quantizers.get(entry.name)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = quantizer(x)
        grad = tape.gradient(y, x)
        ax.plot(x.numpy()[:, 0], y.numpy()[:, 0], label="forward")
        ax.plot(x.numpy()[:, 0], grad.numpy()[:, 0], "--", label="pseudo-gradient")
        ax.set_title(entry.name)
        ax.grid(alpha=0.3)
    axes[0][0].legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    plt.close(fig)
    return [e.name for e in entries]
