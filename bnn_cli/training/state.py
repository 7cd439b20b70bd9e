"""The training loop's own state (saved in every checkpoint, so a run resumes exactly
where it stopped) and the rules that read it: early stopping's patience, whether a
stage's epochs are done.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bnn_cli.config.monitor import is_better, monitor_mode
from bnn_cli.config.schema import TrainingConfig


@dataclass
class LoopState:
    """What the loop needs to continue exactly where it stopped (saved in checkpoints)."""

    epoch: int = 0  # completed epochs
    history: list[dict[str, Any]] | None = None
    best_value: float | None = None
    best_epoch: int | None = None
    stop_best: float | None = None  # best value of early stopping's metric
    wait: int = 0  # epochs without improvement, for early stopping
    wall_time: float = 0.0
    stage: int = 0  # of a multi-stage config: the stage being trained, which
    stage_start: int = 0  # began after this many epochs (best and wait are its own)
    reached: int | None = None  # the epoch that reached training.target, in this stage
    examples: int = 0  # training examples seen, all stages
    macs: dict[str, int] = field(default_factory=dict)  # training compute, by precision

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "history": self.history or [],
                "best_value": self.best_value, "best_epoch": self.best_epoch,
                "stop_best": self.stop_best, "wait": self.wait, "wall_time": self.wall_time,
                "stage": self.stage, "stage_start": self.stage_start,
                "reached": self.reached, "examples": self.examples,
                "macs": self.macs}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LoopState:
        return cls(epoch=int(d["epoch"]), history=list(d.get("history") or []),
                   best_value=d.get("best_value"), best_epoch=d.get("best_epoch"),
                   stop_best=d.get("stop_best", d.get("best_value")),
                   wait=int(d.get("wait", 0)), wall_time=float(d.get("wall_time", 0.0)),
                   stage=int(d.get("stage", 0)), stage_start=int(d.get("stage_start", 0)),
                   reached=d.get("reached"), examples=int(d.get("examples", 0)),
                   macs=dict(d.get("macs") or {}))

    def next_stage(self) -> None:
        """Start the next stage: its epochs count from here, its best is its own."""
        self.stage, self.stage_start = self.stage + 1, self.epoch
        self.best_value = self.best_epoch = self.stop_best = self.reached = None
        self.wait = 0


def count_patience(training: TrainingConfig, state: LoopState, row: dict[str, Any]) -> None:
    """Early stopping's count of epochs without an improvement of its own metric (by
    more than ``min_delta``), which may differ from the metric that picks the best."""
    stop = training.early_stopping
    name = stop.monitor or training.monitor
    if is_better(row[name], state.stop_best, monitor_mode(training, name), stop.min_delta):
        state.stop_best, state.wait = row[name], 0
    else:
        state.wait += 1


def target_monitor(training: TrainingConfig) -> str:
    """The metric ``training.target`` watches: its own ``monitor``, else the run's."""
    return training.target.monitor or training.monitor


def reaches_target(training: TrainingConfig, row: dict[str, Any]) -> bool:
    """Whether an epoch's ``row`` reached ``training.target`` (the one monitor rule
    says which way is better; reaching the value exactly counts)."""
    if training.target is None:
        return False
    name = target_monitor(training)
    value = row[name]
    return value <= training.target.value if monitor_mode(training, name) == "min" \
        else value >= training.target.value


def target_record(training: TrainingConfig, state: LoopState,
                  row: dict[str, Any] | None = None, **where: Any) -> dict[str, Any]:
    """run.json's ``target``: the metric and value, what the epoch ``row`` that reached
    it logged (None: not reached) and ``where`` it was (epoch, stage, seconds), and the
    examples and training MACs spent until then."""
    name = target_monitor(training)
    return {"monitor": name, "value": training.target.value,
            "reached": row[name] if row else None, **where,
            "examples": state.examples, "training_macs": dict(state.macs)}


def training_done(training: TrainingConfig, state: LoopState) -> bool:
    """Whether the loop would train no further epoch of the stage from ``state`` (all
    its epochs done, early stopping already triggered, or its target reached)."""
    stop = training.early_stopping
    return (state.epoch >= state.stage_start + training.epochs
            or bool(stop and state.wait > stop.patience) or state.reached is not None)
