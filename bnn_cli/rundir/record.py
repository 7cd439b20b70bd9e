"""``run.json``: the one record of a run, typed.

Only :class:`~bnn_cli.rundir.run.RunDir` reads and writes it (``read_record`` /
``write_record``); everyone else reads a :class:`RunRecord`'s attributes. A field name
that is not one of the record's is a programming error at the writer, not a key that
silently never gets read. Files of older runs read as they are: a key this version does
not know is kept in ``extra`` and written back unchanged.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

LIVE_STATUSES = ("starting", "running")


@dataclass(frozen=True)
class RunRecord:
    """What a run is and what it measured, as ``run.json`` keeps it."""

    status: str | None = None  # starting, running, completed, interrupted or failed
    name: str | None = None
    config_path: str | None = None  # the config file the run was started from
    data_dir: str | None = None  # the TFDS data_dir it read (a later --data-dir wins)
    started: str | None = None  # local time, ISO 8601
    runtime: dict[str, Any] | None = None  # the strategy, replicas, precision it ran with
    epochs: int | None = None  # planned
    epochs_done: int | None = None
    stage: str | None = None  # of a multi-stage config: the stage training now
    best: dict[str, Any] | None = None  # {monitor: value, "epoch": n}
    final: dict[str, Any] | None = None  # the last epoch's history row
    wall_time: float | None = None  # seconds in the training loop
    # {examples, training_macs}: what training has spent so far (examples seen; about
    # 3 x the forward MACs per example, plus teachers' forward passes, by precision)
    compute: dict[str, Any] | None = None
    test: dict[str, Any] | None = None  # the chosen checkpoint's test evaluation
    # training.target: {monitor, value, reached, epoch, stage, seconds, examples,
    # training_macs}: when the final model reached it, and what it cost
    target: dict[str, Any] | None = None
    error: str | None = None  # why it failed (cleared when a resume completes it)
    pruned: str | None = None  # a sweep's pruner stopped it: when
    extra: dict[str, Any] = field(default_factory=dict)  # keys of other versions

    @classmethod
    def fields(cls) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "extra")

    @classmethod
    def from_json(cls, data: Any) -> RunRecord:
        """A record from run.json's object (anything else is an empty record)."""
        if not isinstance(data, dict):
            return cls()
        known = cls.fields()
        return cls(**{k: v for k, v in data.items() if k in known},
                   extra={k: v for k, v in data.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        """run.json's object: the fields that are set, then the keys of other versions."""
        own = {k: getattr(self, k) for k in self.fields()}
        return {**self.extra, **{k: v for k, v in own.items() if v is not None}}

    def updated(self, **changes: Any) -> RunRecord:
        """This record with ``changes`` (a field set to None is cleared); an unknown
        field name is a TypeError."""
        unknown = sorted(set(changes) - set(self.fields()))
        if unknown:
            raise TypeError(f"run.json has no field {unknown[0]!r}; its fields: "
                            f"{', '.join(self.fields())}")
        return dataclasses.replace(self, **changes)

    @property
    def live(self) -> bool:
        """Whether it says a process is working on it (starting or running)."""
        return self.status in LIVE_STATUSES

    @property
    def test_metrics(self) -> dict[str, Any]:
        return dict((self.test or {}).get("metrics") or {})

    def best_value(self, monitor: str) -> Any:
        return (self.best or {}).get(monitor)
