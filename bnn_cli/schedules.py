"""Learning-rate schedules written in epochs (the ``training.learning_rate`` section)."""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any

from bnn_cli._keras import keras, tf
from bnn_cli.registry import register

__all__ = ["EpochSchedule"]


class EpochSchedule(keras.optimizers.schedules.LearningRateSchedule):
    """A :class:`~bnn_cli.config.schema.Schedule` (written in epochs) evaluated per step.

    Warm-up rises linearly from ``initial / warmup_steps`` to ``initial``; then:
    constant; exponential ``initial * decay_rate^(t / decay_epochs)``; piecewise
    constant over epoch ``boundaries``; cosine, or linear, from ``initial`` to
    ``alpha * initial`` over the remaining epochs (``t`` in epochs after warm-up; with
    ``per: epoch``, whole epochs: ``t`` rounded down, the rate held through each epoch,
    e.g. ReActNet's ``initial * (1 - epoch / epochs)``).

    ``schedule`` is a complete, validated ``training.learning_rate`` mapping (every key of
    :class:`~bnn_cli.config.schema.Schedule`, as its ``model_dump()`` gives): the config
    checks it once, so it is read here as it is.
    """

    def __init__(self, schedule: dict[str, Any], steps_per_epoch: int, total_epochs: int):
        self.schedule = dict(schedule)
        self.steps_per_epoch = int(steps_per_epoch)
        self.total_epochs = int(total_epochs)

    def __call__(self, step):
        s = SimpleNamespace(**self.schedule)
        step = tf.cast(step, tf.float32)
        spe = float(max(self.steps_per_epoch, 1))
        warmup = s.warmup_epochs * spe
        t = tf.maximum(step - warmup, 0.0) / spe  # epochs after warm-up
        if getattr(s, "per", "step") == "epoch":  # (older files have no "per")
            t = tf.floor(t)
        if s.type == "exponential":
            lr = s.initial * tf.pow(s.decay_rate, t / s.decay_epochs)
        elif s.type == "piecewise":
            values = s.values or [s.initial]
            lr = tf.constant(values[-1], tf.float32)
            for boundary, value in reversed(list(zip(s.boundaries, values, strict=False))):
                lr = tf.where(step / spe < boundary, value, lr)
        elif s.type in ("cosine", "linear"):
            span = max(self.total_epochs - s.warmup_epochs, 1e-9)
            done = tf.minimum(t / span, 1.0)
            left = 1 - done if s.type == "linear" else 0.5 * (1 + tf.cos(math.pi * done))
            lr = s.initial * (s.alpha + (1 - s.alpha) * left)
        else:
            lr = tf.constant(s.initial, tf.float32)
        if warmup > 0:
            lr = tf.where(step < warmup, s.initial * (step + 1) / warmup, lr)
        return lr

    def get_config(self):
        return {"schedule": self.schedule, "steps_per_epoch": self.steps_per_epoch,
                "total_epochs": self.total_epochs}


register("schedule", EpochSchedule)
