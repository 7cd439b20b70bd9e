"""The Python API: what the ``bnn`` commands do, as functions for notebooks and scripts.

    import bnn_cli

    run = bnn_cli.train("configs/quickstart.yaml", "training.epochs=3")
    run.test["metrics"]["accuracy"], run.best, run.path
    bnn_cli.evaluate(run.path, split="test").metrics
    bnn_cli.export(run.path, format="tflite").path

A ``config`` is a path, a YAML string or a plain dict; ``overrides`` are the command line's
``KEY.PATH=VALUE`` strings. Every mistake a user can fix raises :class:`UserError` with the
message the CLI prints: file, line and key for a file; for a dict, the key path (its lines
mean nothing to the caller); for a YAML string, ``<yaml>:LINE:COLUMN``.

Each function returns the typed report its command prints (``report.as_dict()`` is the
command's ``--json``); the CLI is a thin shell over these functions.
"""

from __future__ import annotations

import contextlib
import re
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bnn_cli.errors import UserError

if TYPE_CHECKING:
    from bnn_cli.assemble.report import CheckReport
    from bnn_cli.deploy.export import ExportReport
    from bnn_cli.deploy.predict import PredictReport
    from bnn_cli.rundir.record import RunRecord
    from bnn_cli.training.evaluation import EvalReport

__all__ = ["Run", "UserError", "check", "evaluate", "export", "predict", "resume", "train"]

ConfigSource = str | Path | Mapping[str, Any]
"""A config file's path, YAML text, or the mapping YAML would give."""


@dataclass(frozen=True)
class Run:
    """A training run: its directory, how it ended and what it measured."""

    path: Path
    status: str  # completed, interrupted or failed
    exit_code: int  # what `bnn train` exits with: 0, 1, 130 or 143
    history: list[dict[str, Any]]  # one row of metrics per epoch

    @property
    def record(self) -> RunRecord:
        """The run's ``run.json`` as it is now."""
        from bnn_cli.rundir.run import RunDir

        return RunDir.open(self.path).read_record_safely()

    @property
    def best(self) -> dict[str, Any]:
        """The best value of the monitor and its epoch (``{"val_accuracy": .., "epoch": ..}``)."""
        return dict(self.record.best or {})

    @property
    def test(self) -> dict[str, Any]:
        """The chosen checkpoint's test evaluation (``metrics``, ``checkpoint``, ``split``)."""
        return dict(self.record.test or {})


def train(config: ConfigSource, *overrides: str, output: str | Path = "runs",
          data_dir: str | None = None, plugins: Iterable[str] = ()) -> Run:
    """``bnn train CONFIG [KEY=VALUE ...]``: check, build, train; a new run directory
    under ``output``."""
    from bnn_cli.training.loop import train_from_config

    with _config_file(config) as path:
        result = train_from_config(path, list(overrides), output_root=output,
                                   data_dir=data_dir, plugins=list(plugins))
    return Run(result.run_dir, result.status, result.exit_code, result.history)


def resume(run: str | Path, *, data_dir: str | None = None, config: str | Path | None = None,
           trust_plugins: bool = False) -> Run:
    """``bnn train [CONFIG] --resume RUN``: continue a run from its last good checkpoint,
    with the config it was started with (a ``config`` given is only compared with it)."""
    from bnn_cli.training.loop import resume_run

    result = resume_run(run, data_dir=data_dir, config_path=config,
                        trust_plugins=trust_plugins)
    return Run(result.run_dir, result.status, result.exit_code, result.history)


def check(config: ConfigSource, *overrides: str, data_dir: str | None = None,
          plugins: Iterable[str] = (), target: str | None = None) -> CheckReport:
    """``bnn check``: validate a config and build its model, without training."""
    from bnn_cli.assemble.report import check_config

    with _config_file(config) as path:
        return check_config(path, list(overrides), plugins=list(plugins), data_dir=data_dir,
                            target=target)


def evaluate(target: str | Path, *, split: str | None = None, checkpoint: str = "best",
             data_dir: str | None = None, config: ConfigSource | None = None,
             trust_plugins: bool = False) -> EvalReport:
    """``bnn eval``: a run directory, checkpoint or model file's metrics on a split."""
    from bnn_cli.deploy.evaluate import evaluate_target
    from bnn_cli.deploy.targets import TargetOptions

    with _config_file(config) as path:
        options = TargetOptions(checkpoint, data_dir, path, trust_plugins)
        return evaluate_target(target, options, split=split)


def export(target: str | Path, *, format: str, output: str | Path | None = None,  # noqa: A002
           checkpoint: str = "best", latent: bool = False, int8: bool = False,
           data_dir: str | None = None, config: ConfigSource | None = None,
           trust_plugins: bool = False) -> ExportReport:
    """``bnn export``: write a trained model for inference (keras, saved_model, tflite,
    lce) and check the file against the trained model."""
    from bnn_cli.deploy.export import export_target
    from bnn_cli.deploy.targets import TargetOptions

    with _config_file(config) as path:
        options = TargetOptions(checkpoint, data_dir, path, trust_plugins)
        return export_target(target, options, fmt=format, output=output, latent=latent,
                             int8=int8)


def predict(target: str | Path, inputs: Iterable[str | Path] = (), *,
            split: str | None = None, top_k: int = 3, checkpoint: str = "best",
            data_dir: str | None = None, config: ConfigSource | None = None,
            trust_plugins: bool = False) -> PredictReport:
    """``bnn predict``: the most probable classes of image files or a split's examples."""
    from bnn_cli.deploy.predict import predict_target
    from bnn_cli.deploy.targets import TargetOptions

    with _config_file(config) as path:
        options = TargetOptions(checkpoint, data_dir, path, trust_plugins)
        return predict_target(target, options, list(inputs), split=split, top_k=top_k)


# ---------------------------------------------------------------------------------------
# A config given as text or a mapping
# ---------------------------------------------------------------------------------------


@contextlib.contextmanager
def _config_file(config: ConfigSource | None) -> Iterator[Path | None]:
    """A path for ``config``: itself if it is one; else its YAML written to a private
    temporary file for as long as the call lasts (a run keeps its own copy), with errors
    relabelled so they point into what the caller gave, not at that file."""
    if config is None or isinstance(config, Path):
        yield config
        return
    if not isinstance(config, str | Mapping):
        raise UserError(f"a config is a path, YAML text or a dict, not a "
                        f"{type(config).__name__}")
    if isinstance(config, str) and not _is_yaml_text(config):
        yield Path(config)
        return
    if isinstance(config, Mapping):
        data, label, lines = _with_absolute_paths(dict(config)), "<dict>", False
    else:
        data, label, lines = _parsed(config), "<yaml>", True
    name = data.get("name") if isinstance(data, dict) else None
    text = config if isinstance(config, str) and data is config else None
    with tempfile.TemporaryDirectory(prefix="bnn-config-") as folder:
        path = Path(folder) / f"{name if isinstance(name, str) else 'config'}.yaml"
        path.write_text(text or _yaml_of(data), encoding="utf-8")
        try:
            yield path
        except UserError as exc:
            exc.args = (_relabel(str(exc), path, label, lines),)
            raise


def _yaml_of(data: Any) -> str:
    """A dict config as YAML; a value YAML has no plain form for is the caller's to fix."""
    try:
        return yaml.safe_dump(data, sort_keys=False)
    except yaml.YAMLError as exc:
        value = exc.args[1] if len(exc.args) > 1 else exc
        raise UserError(f"<dict>: the config holds {value!r} ({type(value).__name__}), which a "
                        "config cannot: give plain values (str, int, float, bool, None, "
                        "lists and dicts of them), e.g. str(path) for a path") from None


def _is_yaml_text(text: str) -> bool:
    """YAML text has a line break or a ``key:`` mapping; a path has neither."""
    return "\n" in text or bool(re.match(r"^\s*[\w.]+\s*:\s", text))


def _parsed(text: str) -> Any:
    """YAML text as data, relative ``extends``/plugin paths made absolute; the text itself
    where it needs no change (so its line numbers stay the caller's)."""
    from bnn_cli.config.source import parse_yaml

    data = parse_yaml(text, "<yaml>").data  # (safe, located errors, size limits)
    if isinstance(data, dict) and (data.get("extends") or data.get("plugins")
                                   or _relative_folder(data) is not None):
        return _with_absolute_paths(data)
    return text


def _relative_folder(data: dict[str, Any]) -> str | None:
    """``data.dataset`` made absolute where it is a relative path to a folder here."""
    section = data.get("data")
    dataset = section.get("dataset") if isinstance(section, dict) else None
    if not isinstance(dataset, str) or Path(dataset).expanduser().is_absolute():
        return None
    return str(Path(dataset).resolve()) if Path(dataset).is_dir() else None


def _with_absolute_paths(data: dict[str, Any]) -> dict[str, Any]:
    """A config file's ``extends`` and plugin files are relative to its folder; a config
    that is not a file has them relative to the current folder."""
    out = dict(data)
    if (folder := _relative_folder(out)) is not None:
        out["data"] = {**out["data"], "dataset": folder}
    if isinstance(out.get("extends"), str):
        out["extends"] = str(Path(out["extends"]).expanduser().resolve())
    if isinstance(out.get("plugins"), list):
        out["plugins"] = [str(Path(p).resolve()) if isinstance(p, str) and p.endswith(".py")
                          else p for p in out["plugins"]]
    return out


def _relabel(message: str, path: Path, label: str, lines: bool) -> str:
    where = re.escape(str(path)) + r"(:\d+:\d+)?"
    return re.sub(where, lambda m: label + ((m.group(1) or "") if lines else ""), message)
