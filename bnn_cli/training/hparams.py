"""A run's hyperparameters for TensorBoard's HParams dashboard.

Written once, when the run directory is created, into ``RUN/tensorboard/`` (the folder
whose ``train/`` and ``validation/`` the training logs its scalars into, so the dashboard
finds each run's metrics beside its hyperparameters): every scalar of the resolved
config outside ``model`` (the training and data sections, the name), plus each key a
command-line override (a sweep's trial) set, wherever it is. ``tensorboard --logdir
runs/`` then shows one session per run, comparable with no extra step.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from bnn_cli._keras import tf
from bnn_cli.config.flat import flatten
from bnn_cli.config.source import parse_override_path

MAX_TEXT = 200


def _scalar(value: Any) -> bool | int | float | str | None:
    if isinstance(value, (bool, int, float, str)):
        return value
    if value is None:
        return None
    text = json.dumps(value, default=str)
    return text if len(text) <= MAX_TEXT else None


def hparams_of(resolved: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """The values written: ``key.path -> bool/int/float/str``."""
    flat = flatten(resolved)
    chosen = {k: v for k, v in flat.items() if not k.startswith("model.")}
    for item in overrides:
        key = item.partition("=")[0].strip()
        try:
            path = parse_override_path(key)
        except Exception:  # noqa: BLE001 - (checked before the run; never fail here)
            continue
        value: Any = resolved
        for part in path:
            try:
                value = value[part]
            except (KeyError, IndexError, TypeError):
                value = None
                break
        chosen[key] = value
    out = {}
    for key, value in chosen.items():
        scalar = _scalar(value)
        if scalar is not None:
            out[key] = scalar
    return out


def write_hparams(run: Any, config: Any, overrides: list[str]) -> None:
    """Log ``config``'s hyperparameters (a :class:`~bnn_cli.config.schema.Config`) in
    ``run``'s TensorBoard folder; a failure is a warning, never a failed run."""
    try:
        from tensorboard.plugins.hparams import api as hp


        resolved = config.spec.model_dump(mode="json")
        resolved["name"] = config.name
        values = hparams_of(resolved, overrides)
        writer = tf.summary.create_file_writer(str(run.file("tensorboard")))
        try:
            with writer.as_default():
                hp.hparams(values)
            writer.flush()
        finally:
            writer.close()
    except Exception as exc:  # noqa: BLE001 - the dashboard is a convenience
        sys.stderr.write(f"warning: could not write the run's hyperparameters for "
                         f"TensorBoard: {type(exc).__name__}: {exc}\n")
