"""``bnn eval``: a run directory, a checkpoint or a model file -> metrics on a split."""

from __future__ import annotations

import builtins
import contextlib
import json
import time
import zipfile
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
        console = Console()
        console.print(f"{self.target}{where} on split {self.split!r}", soft_wrap=True)
        table = Table()
        table.add_column("metric")
        table.add_column("value", justify="right")
        for key, value in self.metrics.items():
            table.add_row(key, f"{value:.4f}")
        console.print(table)


def _load_model_file(path: Path):
    from bnn_cli import catalog
    from bnn_cli._keras import keras

    catalog.load_builtins()  # every bnn_cli class is known before Keras deserializes
    _refuse_code(path, _stored_config(path))
    try:
        # safe_mode: a saved model never runs code stored in it (e.g. Lambda bytecode).
        return keras.models.load_model(path, compile=False, safe_mode=True)
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise UserError(f"cannot load the model file {path}: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else type(exc).__name__


def _stored_config(path: Path) -> Any:
    """The architecture a model file stores (``.keras`` zip or legacy HDF5), or None."""
    with contextlib.suppress(Exception):  # unreadable files are reported by Keras below
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                return json.loads(archive.read("config.json"))
        import h5py

        with h5py.File(path, "r") as f:
            raw = f.attrs.get("model_config")
            return json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    return None


# Modules a saved model may name for its classes and functions. Keras imports whatever
# module a file names (running its top-level code) and hands back any attribute of it,
# and Keras's safe_mode covers neither that nor legacy HDF5 files, so the architecture is
# checked here first: code runs only from bnn_cli, Keras and the plugins a config names.
_SAFE_MODULES = ("keras", "tf_keras", "bnn_cli")


def _refuse_code(path: Path, config: Any) -> None:
    """Raise a UserError if loading ``config`` would run code stored in or named by it."""
    from bnn_cli._keras import keras

    def refuse(what: str) -> UserError:
        return UserError(f"refusing to load the model file {path}: it contains {what}, and "
                         "loading it would run code that the file names or stores; bnn "
                         "never does that. Rebuild the model from its config (e.g. evaluate "
                         "the run directory or a checkpoint) instead")

    stack = [config]
    while stack:
        node = stack.pop()
        if isinstance(node, list):
            stack.extend(node)
            continue
        if not isinstance(node, dict):
            continue
        name = node.get("class_name")
        if name in ("Lambda", "__lambda__"):
            raise refuse("a Lambda layer (Python code)")
        module = node.get("module")
        registered = node.get("registered_name")
        if isinstance(module, str) and not (
            module.split(".")[0] in _SAFE_MODULES
            # builtins: Keras looks the name up among its own functions ('relu'), but a
            # Python builtin ('eval', 'exec') would be returned as is.
            or (module == "builtins" and name == "function"
                and not hasattr(builtins, str(node.get("config"))))
            or (isinstance(registered, str)
                and keras.saving.get_registered_object(registered) is not None)
        ):
            raise refuse(f"{name!r} from the Python module {module!r}")
        stack.extend(node.values())


def evaluate_target(target: str | Path, *, split: str | None = None, checkpoint: str = "best",
                    data_dir: str | None = None, config: str | Path | None = None
                    ) -> EvalReport:
    """Evaluate a run directory / checkpoint / model file; write results into the run."""
    from bnn_cli.training import load_run_config, prepare, restore

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
        restore(job, ckpt, partial=True)
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
