"""``bnn eval``: a run directory, a checkpoint or a model file -> metrics on a split."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnn_cli.config import Config, load_config
from bnn_cli.errors import UserError
from bnn_cli.runs import RunDir, atomic_write_json, find_run_dir

MODEL_SUFFIXES = (".keras", ".h5", ".hdf5")


@dataclass
class EvalReport:
    target: str
    split: str
    metrics: dict[str, float]
    checkpoint: str | None = None
    epoch: int | None = None
    written: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return {"target": self.target, "split": self.split, "checkpoint": self.checkpoint,
                "epoch": self.epoch, "metrics": self.metrics}

    def print(self) -> None:
        from rich.console import Console
        from rich.table import Table

        where = f" ({self.checkpoint}, epoch {self.epoch})" if self.checkpoint else ""
        table = Table(title=f"split {self.split!r}", caption=f"{self.target}{where}")
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in self.metrics.items():
            table.add_row(key, f"{value:.4f}")
        Console().print(table)


def _load_model_file(path: Path):
    from bnn_cli import catalog
    from bnn_cli._keras import keras

    catalog.load_builtins()  # every bnn_cli class is known before Keras deserializes
    try:
        # safe_mode: a saved model never runs code stored in it (e.g. Lambda bytecode).
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot load the model file {path}: {exc}") from None


def evaluate_target(target: str | Path, *, split: str | None = None, checkpoint: str = "best",
                    data_dir: str | None = None, config: str | Path | None = None
                    ) -> EvalReport:
    """Evaluate a run directory / checkpoint / model file; write results into the run."""
    from bnn_cli.training import load_run_config, prepare

    target = Path(target)
    if not target.exists():
        raise UserError(f"{target}: no such file or directory; give a run directory, a "
                        "checkpoint it wrote, or a saved model file")
    if checkpoint not in ("best", "last"):
        raise UserError(f"--checkpoint must be 'best' or 'last', not {checkpoint!r}")
    run = find_run_dir(target if target.is_dir() else target.parent)
    is_model_file = target.is_file() and target.suffix in MODEL_SUFFIXES
    cfg: Config | None = load_config(config) if config else None
    if cfg is None and run is not None:
        cfg, _ = load_run_config(run)
    if cfg is None:
        raise UserError(f"{target} is not inside a run directory, so nothing says which data "
                        "to evaluate on; pass --config CONFIG.yaml")
    job = prepare(cfg, run or RunDir(target.parent), data_dir)
    label, epoch = None, None
    if is_model_file:
        model = _load_model_file(target)
        model.compile(loss=cfg.spec.training.loss, metrics=list(cfg.spec.training.metrics))
    else:
        assert run is not None
        ckpt = (run.load_checkpoint(checkpoint) if target == run.path
                else run.resolve_checkpoint(target))
        job.checkpoint.read(ckpt.prefix).expect_partial()
        model, label, epoch = job.model, ckpt.path.name, ckpt.state.get("epoch")
    return _evaluate(model, cfg, job.data_dir, split or cfg.spec.data.test_split, run,
                     str(target), label, epoch)


def _evaluate(model, cfg: Config, data_dir: str | None, split: str, run: RunDir | None,
              target: str, label: str | None, epoch: int | None) -> EvalReport:
    from bnn_cli import data

    ds = data.load_split(cfg.spec.data, split, training=False,
                         batch_size=cfg.spec.training.batch_size, seed=None, data_dir=data_dir)
    values = model.evaluate(ds, verbose=0, return_dict=True)
    report = EvalReport(target, split, {k: float(v) for k, v in values.items()}, label, epoch)
    if run is not None:
        safe_split = "".join(c if c.isalnum() else "_" for c in split)
        out = run.file(f"eval-{safe_split}-{label or 'model'}.json")
        atomic_write_json(out, {**report.as_dict(),
                                "time": time.strftime("%Y-%m-%dT%H:%M:%S")})
        report.written.append(str(out))
    return report
