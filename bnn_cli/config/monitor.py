"""The one monitor rule: which way a logged metric improves, and whether a value is
better than the best so far (the training loop's best checkpoint and early stopping,
the plots' starred epochs, ``bnn runs`` and ``bnn sweep``'s rankings).
"""

from __future__ import annotations

from typing import Any

from bnn_cli.config.schema import Config, TrainingConfig


def guess_mode(monitor: str) -> str:
    """Whether a metric improves downwards ("min": losses and errors) or upwards ("max"):
    the rule of ``training.monitor_mode: auto``."""
    return "min" if "loss" in monitor or "error" in monitor else "max"


def monitor_mode(training: TrainingConfig, monitor: str) -> str:
    """Whether ``monitor`` improves downwards ("min") or upwards ("max"): as the config's
    ``training.monitor_mode`` says for its own monitor, else by :func:`guess_mode`."""
    if training.monitor_mode != "auto" and monitor == training.monitor:
        return training.monitor_mode
    return guess_mode(monitor)


def is_better(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


def selection(cfg: Config) -> dict[str, str | None]:
    """The split and metric that choose a run's best checkpoint: ``training.monitor``,
    computed on the validation split (``val_*``) or else on the training split."""
    spec = cfg.spec
    monitor = spec.training.monitor
    split = spec.data.validation_split if monitor.startswith("val_") else spec.data.train_split
    return {"split": split, "monitor": monitor}


def best_epochs(history: list[dict[str, Any]], monitor: str, mode: str) -> list[int]:
    """The epoch with the best ``monitor`` (one per stage of a multi-stage run: each
    stage selects its own), as the run's checkpoints chose them (the first of ties)."""
    best: dict[Any, tuple[float, int]] = {}
    for row in history:
        value = row.get(monitor)
        if not isinstance(value, (int, float)) or value != value:  # (NaN)
            continue
        stage = row.get("stage")
        old = best.get(stage)
        if is_better(value, None if old is None else old[0], mode):
            best[stage] = (value, row["epoch"])
    return [epoch for _, epoch in best.values()]
