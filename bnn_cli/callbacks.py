r"""Keras callbacks for training quantized networks (as ``larq.callbacks``)."""

from __future__ import annotations

import inspect
from collections.abc import Callable, MutableMapping
from typing import Any

from bnn_cli._keras import keras
from bnn_cli.registry import register

__all__ = ["HyperparameterScheduler"]

_UPDATE_FREQS = ("epoch", "step")


class HyperparameterScheduler(keras.callbacks.Callback):
    r"""Set an optimizer's hyperparameter from a schedule, each epoch or each step.

    At the start of epoch ``e`` (``update_freq="epoch"``) or of each training step with
    the optimizer's iteration count ``t`` (``update_freq="step"``)::

        optimizer.<hyperparameter> = schedule(t, current_value)   # or schedule(t)

    The value is also logged (as ``log_name``) at the end of each epoch. Example, Bop's
    ``gamma`` divided by 10 every 30 epochs::

        bop = Bop(threshold=1e-6, gamma=1e-3)
        HyperparameterScheduler(lambda epoch: 1e-3 * 0.1 ** (epoch // 30), "gamma", bop)

    Args:
        schedule: a function of the epoch (from 0) or step index, and optionally of the
            current value, returning the new value.
        hyperparameter: the name of the optimizer attribute to set (a variable, such as
            ``"gamma"`` or ``"learning_rate"``).
        optimizer: the optimizer to change; the model's optimizer if ``None``. With a
            :class:`bnn_cli.optimizers.CaseOptimizer`, pass the inner optimizer.
        update_freq: ``"epoch"`` or ``"step"``.
        verbose: 0 quiet, 1 print each update.
        log_name: the name under which the value is logged (default: the
            hyperparameter's name); set it when scheduling the same hyperparameter of
            several optimizers.
    """

    def __init__(
        self,
        schedule: Callable[..., float],
        hyperparameter: str,
        optimizer: Any = None,
        update_freq: str = "epoch",
        verbose: int = 0,
        log_name: str | None = None,
    ):
        super().__init__()
        if not callable(schedule):
            raise TypeError(f"HyperparameterScheduler schedule must be callable, got "
                            f"{type(schedule).__name__}")
        if update_freq not in _UPDATE_FREQS:
            raise ValueError("HyperparameterScheduler update_freq must be 'epoch' or 'step', "
                             f"got {update_freq!r}")
        self.optimizer = optimizer
        self.schedule = schedule
        self.hyperparameter = hyperparameter
        self.update_freq = update_freq
        self.verbose = verbose
        self.log_name = log_name or hyperparameter
        self._takes_value = _takes_two_args(schedule)

    def set_model(self, model: keras.Model) -> None:
        super().set_model(model)
        if self.optimizer is None:
            self.optimizer = model.optimizer
        try:
            getattr(self.optimizer, self.hyperparameter)
        except (AttributeError, ValueError):  # Keras raises ValueError for a missing lr
            raise ValueError(
                f"optimizer {getattr(self.optimizer, 'name', self.optimizer)!r} has no "
                f"{self.hyperparameter!r} attribute to schedule"
            ) from None

    def set_hyperparameter(self, t: int) -> Any:
        """Set the hyperparameter to the schedule's value at ``t``; returns the variable."""
        hp = getattr(self.optimizer, self.hyperparameter)
        if self._takes_value is None:  # signature unknown: try both forms, as Larq does
            try:
                value = self.schedule(t, keras.backend.get_value(hp))
            except TypeError:
                value = self.schedule(t)
        elif self._takes_value:
            value = self.schedule(t, keras.backend.get_value(hp))
        else:
            value = self.schedule(t)
        keras.backend.set_value(hp, value)
        return hp

    def on_batch_begin(self, batch: int, logs: MutableMapping[str, Any] | None = None) -> None:
        if self.update_freq != "step":
            return
        # The optimizer's global step: `batch` restarts from 0 every epoch.
        step = int(keras.backend.get_value(self.optimizer.iterations))
        hp = self.set_hyperparameter(step)
        if self.verbose > 0:
            print(f"Batch {step}: {self.log_name} is now {keras.backend.get_value(hp)}.")

    def on_epoch_begin(self, epoch: int, logs: MutableMapping[str, Any] | None = None) -> None:
        if self.update_freq != "epoch":
            return
        hp = self.set_hyperparameter(epoch)
        if self.verbose > 0:
            print(f"Epoch {epoch}: {self.log_name} is now {keras.backend.get_value(hp)}.")

    def on_epoch_end(self, epoch: int, logs: MutableMapping[str, Any] | None = None) -> None:
        if logs is not None:
            logs[self.log_name] = keras.backend.get_value(
                getattr(self.optimizer, self.hyperparameter))


def _takes_two_args(fn: Callable[..., Any]) -> bool | None:
    """Whether ``fn`` accepts ``(t, value)``; None if its signature cannot be read."""
    try:
        inspect.signature(fn).bind(0, 0.0)
    except TypeError:
        return False
    except ValueError:
        return None
    return True


register("callback", HyperparameterScheduler)
