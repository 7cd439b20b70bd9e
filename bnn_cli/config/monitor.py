"""The one monitor rule: which metric a config monitors when it names none, which way a
logged metric improves, and whether a value is better than the best so far (the
training loop's best checkpoint and early stopping, the plots' starred epochs, ``bnn
runs`` and ``bnn sweep``'s rankings).
"""

from __future__ import annotations

from typing import Any

from bnn_cli.config.schema import Config, ConfigFile, TrainingConfig

ACCURACY = ("accuracy", "acc")  # the names Keras logs accuracy under, as written


def default_monitor(spec: ConfigFile, outputs: list[str]) -> str:
    """The metric that picks the best checkpoint of a config that names none: the first
    output's accuracy on the validation split (``val_accuracy``, or ``val_<output>_
    accuracy`` for a model with several outputs) where accuracy is a metric and there
    is a validation split, else the validation loss, else (no validation) the loss. A
    default follows the model, so that it is never the reason a config is refused."""
    accuracy = next((m for m in spec.training.metrics if m in ACCURACY), None)
    validation = bool(spec.data.validation_split)
    if accuracy and validation:
        return f"val_{outputs[0]}_{accuracy}" if len(outputs) > 1 else f"val_{accuracy}"
    return "val_loss" if validation else "loss"


def resolve_monitor(config: Config, outputs: list[str]) -> str | None:
    """Set ``training.monitor`` to :func:`default_monitor` where the config does not
    name one (so that every reader of ``training.monitor``, the checks and training
    alike, uses the resolved one); returns the name chosen, or None where the config
    names its monitor. ``outputs``: the model's output layer names."""
    training = config.spec.training
    if "monitor" in training.model_fields_set:
        return None
    training.monitor = default_monitor(config.spec, outputs)
    training.model_fields_set.discard("monitor")  # (chosen, still not written)
    return training.monitor


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


def tie_breaker(monitor: str) -> str | None:
    """The metric that decides between epochs with the same ``monitor`` value: the loss
    on the same split. Accuracy ties are common on a small validation split (the
    quickstart's 144 examples reach 1.0 in several epochs); the first of them is not
    a choice."""
    loss = "val_loss" if monitor.startswith("val_") else "loss"
    return None if monitor == loss else loss


def improves(row: dict[str, Any], best: dict[str, Any] | None, monitor: str,
             mode: str) -> bool:
    """Whether the epoch ``row`` is better than the best epoch so far (``best``, its
    history row): by ``monitor``, and on a tie by :func:`tie_breaker` (lower wins)."""
    if best is None:
        return True
    if row[monitor] != best[monitor]:
        return is_better(row[monitor], best[monitor], mode)
    breaker = tie_breaker(monitor)
    return (breaker is not None and isinstance(row.get(breaker), (int, float))
            and isinstance(best.get(breaker), (int, float)) and row[breaker] < best[breaker])


def tied_epochs(history: list[dict[str, Any]], monitor: str, epoch: int) -> list[int]:
    """The other epochs (of the same stage) whose ``monitor`` equals ``epoch``'s."""
    chosen = next((row for row in history if row.get("epoch") == epoch), None)
    if chosen is None or monitor not in chosen:
        return []
    return [row["epoch"] for row in history if row.get("epoch") != epoch
            and row.get("stage") == chosen.get("stage") and row.get(monitor) == chosen[monitor]]


def best_epochs(history: list[dict[str, Any]], monitor: str, mode: str) -> list[int]:
    """The epoch with the best ``monitor`` (one per stage of a multi-stage run: each
    stage selects its own), as the run's checkpoints chose them (ties broken by
    :func:`tie_breaker`)."""
    best: dict[Any, dict[str, Any]] = {}
    for row in history:
        value = row.get(monitor)
        if not isinstance(value, (int, float)) or value != value:  # (NaN)
            continue
        stage = row.get("stage")
        if improves(row, best.get(stage), monitor, mode):
            best[stage] = row
    return [row["epoch"] for row in best.values()]
