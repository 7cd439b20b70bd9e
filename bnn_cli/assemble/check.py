"""The checked config: a config file -> :class:`CheckedConfig`, everything it names checked.

:func:`check` is the only way from a file to something that can be built. It validates
the schema and the registry's names (:mod:`bnn_cli.config.checks`), imports the plugins,
opens the dataset (:mod:`bnn_cli.data`), checks each stage and its teacher and, for
training only (``start_runtime``), the ``runtime`` section against this machine, whose
strategy it then starts. Every problem in the file is reported at once, each with its
file, line and key. :mod:`bnn_cli.assemble.model` consumes the result and checks nothing
again.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnn_cli._keras import tf
from bnn_cli.assemble import strategy as distribute
from bnn_cli.assemble.distillation import teacher_problem
from bnn_cli.assemble.vetting import load_vetted_model, refuse_run_plugins
from bnn_cli.config import stages as staging
from bnn_cli.config.checks import graph_problems, training_problems
from bnn_cli.config.graph import Graph
from bnn_cli.config.monitor import resolve_monitor
from bnn_cli.config.plugins import load_plugins
from bnn_cli.config.schema import (
    Config,
    ConfigError,
    ConfigFile,
    Distill,
    ModelConfig,
    Problem,
    Teacher,
    ensure_valid,
    load_config,
)
from bnn_cli.data import pipeline as data
from bnn_cli.errors import UserError, error_text
from bnn_cli.registry import load_builtins
from bnn_cli.rundir.run import RunDir


@dataclass
class CheckedStage:
    """One stage, checked: its config, and its teacher's if it distills."""

    index: int
    name: str
    checked: CheckedConfig
    distill: Distill | None = None
    set: dict[str, Any] = field(default_factory=dict)  # what the stage changes
    start: str = "best"  # the weights it starts from: best, last (of the stage before), none
    teachers: list[CheckedTeacher] = field(default_factory=list)  # if it distills


@dataclass
class CheckedTeacher:
    """One teacher of a distilling stage, resolved and checked."""

    spec: Teacher
    stage: int | None = None  # an earlier stage of the run, or
    run: RunDir | None = None  # another run directory, with
    checked: CheckedConfig | None = None  # its config (either way); or
    file: Path | None = None  # a Keras model file, vetted and loaded once to check it


@dataclass
class CheckedConfig:
    """A config every part of which has been checked, with what checking worked out."""

    config: Config
    graph: Graph  # the model, expanded; nodes in dependency order
    data_dir: str | None  # the TFDS data_dir in effect
    data: Any  # bnn_cli.data.pipeline.DataInfo of the dataset; None where it was not checked
    data_unchecked: str | None = None  # why the data section was not checked, if not
    stages: list[CheckedStage] = field(default_factory=list)  # of a multi-stage config
    # training.monitor where the config names none (config.monitor's default), else None
    monitor_chosen: str | None = None

    @property
    def spec(self) -> ConfigFile:
        return self.config.spec

    @property
    def final(self) -> CheckedConfig:
        """The config of the model a run ends with: its last stage's, if it has stages."""
        return self.stages[-1].checked if self.stages else self

    @property
    def input_shapes(self) -> dict[str, tuple[list[int | None], str]]:
        """Shape (without the batch) and dtype of each model input."""
        given = self.spec.model.inputs
        if given is None:
            return {"input": (list(self.data.input_shape), "float32")}
        return {s.name: (s.shape, s.dtype) for s in given}

    @property
    def steps_per_epoch(self) -> int:
        training = self.spec.training
        if self.data is None:  # (only `bnn check` gets here: it builds the optimizer)
            return training.steps_per_epoch or 1
        steps = max(1, self.data.steps_per_epoch(self.spec.data.train_split,
                                                 training.batch_size))
        return min(steps, training.steps_per_epoch or steps)


def check(path: str | Path, overrides: Iterable[str] = (), *, plugins: Iterable[str] = (),
          plugin_base: Path | None = None, data_dir: str | None = None,
          allow_unprepared_data: bool = False, start_runtime: bool = False) -> CheckedConfig:
    """Read ``path`` with ``overrides`` and check everything it names.

    ``plugin_base`` is the folder the config's plugins are relative to (default: the
    config's own); ``data_dir`` is ``--data-dir``. Raises :class:`ConfigError` with every
    problem found, or a ``UserError`` about the data. With ``allow_unprepared_data``
    (``bnn check``), a dataset that TFDS knows but that is not prepared here leaves the
    data section unchecked (``data`` None, ``data_unchecked`` says why) instead, where
    the model's input shapes are given: the model needs nothing from the data then.

    With ``start_runtime`` (training), the ``runtime`` section is checked against this
    machine (the strategy's devices or cluster, the batch size against the replicas) and
    its strategy started, before anything initializes TensorFlow's runtime (as a
    multi-worker strategy requires). Other commands read a run's config on any machine.
    """
    load_builtins()
    config = _load(path, list(overrides))
    runtime = _start_runtime(config) if start_runtime else None
    load_plugins(config, plugins, plugin_base)
    base = plugin_base or Path(path).parent
    checked = _check_loaded(config, data_dir, allow_unprepared_data, runtime, base)
    if config.spec.stages:
        checked.stages = _check_stages(checked, Path(path), list(overrides), data_dir,
                                       allow_unprepared_data, start_runtime, base)
    return checked


def _start_runtime(config: Config) -> list[Problem]:
    """The runtime section's problems on this machine; without any, its strategy is
    started (a strategy that fails to start is a config error too)."""

    runtime = config.spec.runtime
    problems = [config.problem(path, message)
                for path, message in distribute.runtime_problems(runtime)]
    for i, stage in enumerate(config.spec.stages or []):
        problems += [config.problem(("stages", i, "set", key), "a stage cannot change the "
                                    "runtime section: the whole run trains with one "
                                    "strategy and precision; set runtime at the top level",
                                    key=True)
                     for key in stage.set if str(key).split(".")[0] == "runtime"]
    problems = problems or _runtime_batch_problems(config)  # (the replicas are known)
    if problems:
        return problems
    try:
        distribute.start(runtime)
    except (RuntimeError, ValueError, tf.errors.OpError) as exc:
        return [config.problem(("runtime", "strategy"), f"the {runtime.strategy} strategy "
                               f"did not start: {error_text(exc)}")]
    return []


def _runtime_batch_problems(config: Config) -> list[Problem]:
    message = distribute.batch_problem(config.spec.runtime, config.spec.training.batch_size)
    return [config.problem(("training", "batch_size"), message)] if message else []


def _check_loaded(config: Config, data_dir: str | None, allow_unprepared_data: bool,
                  runtime: list[Problem] | None = None, base: Path | None = None
                  ) -> CheckedConfig:
    """Check a loaded config (its plugins imported): model, training, data; with
    ``runtime`` (the runtime section's problems, when it was checked), the batch size
    against the strategy's replicas too. A dataset folder is made absolute here, from
    ``base`` (the config file's folder)."""
    graph, problems = graph_problems(config)
    monitor_chosen = resolve_monitor(config, graph.outputs)
    problems += training_problems(config, graph)
    if runtime is not None:
        problems += runtime or _runtime_batch_problems(config)
    ensure_valid(problems)

    resolved_dir = data.resolve_data_dir(config.spec.data.data_dir, data_dir)
    try:
        folder = data.dataset_path(config.spec.data.dataset, base)
        if folder is not None:
            config.spec.data.dataset = str(folder)
        info = data.dataset_info(config.spec.data, resolved_dir)
    except data.DataKeyError as exc:  # a mistake in the file: say where it is
        raise ConfigError([config.problem(("data", *exc.path), str(exc))]) from None
    except UserError as exc:
        if not (allow_unprepared_data and config.spec.model.inputs
                and _known_but_unprepared(config.spec.data.dataset, resolved_dir)):
            raise
        return CheckedConfig(config, graph, resolved_dir, None, data_unchecked=str(exc),
                             monitor_chosen=monitor_chosen)
    ensure_valid([config.problem(("data", key), str(exc)) for key, exc in
                  _split_errors(config, info)])
    return CheckedConfig(config, graph, resolved_dir, info, monitor_chosen=monitor_chosen)


def _check_stages(base: CheckedConfig, path: Path, overrides: list[str],
                  data_dir: str | None, allow_unprepared_data: bool,
                  start_runtime: bool = False, folder: Path | None = None
                  ) -> list[CheckedStage]:
    """Each stage's config checked as a whole config; its teacher resolved and checked."""
    config, specs = base.config, base.spec.stages or []
    names = [s.name for s in specs]
    problems = [config.problem(("stages", i, "name"), f"a stage named {s.name!r} comes "
                               "earlier; give each stage its own name")
                for i, s in enumerate(specs) if s.name in names[:i]]
    ensure_valid(problems)
    done: list[CheckedStage] = []
    for i, spec in enumerate(specs):
        try:
            checked = _check_loaded(staging.stage_config(path, i, overrides), data_dir,
                                    allow_unprepared_data, [] if start_runtime else None,
                                    folder)
        except ConfigError as exc:
            raise ConfigError([Problem(p.path, f"in stage {spec.name!r}: {p.message}",
                                       p.location) for p in exc.problems]) from None
        stage = CheckedStage(i, spec.name, checked, spec.distill, spec.set, spec.start)
        if spec.distill is not None:
            stage.teachers = [
                _resolve_teacher(stage, k, names, done, config, data_dir, folder)
                for k, _ in enumerate(spec.distill.teachers)]
            problems += staging.distill_problems(
                config, i, spec.distill, checked.graph,
                [t.checked.graph if t.checked else None for t in stage.teachers])
        done.append(stage)
    ensure_valid(problems)
    return done


def _resolve_teacher(stage: CheckedStage, k: int, names: list[str],
                     done: list[CheckedStage], config: Config, data_dir: str | None,
                     folder: Path | None) -> CheckedTeacher:
    """Teacher ``k`` of ``stage``: an earlier stage, or a run directory or model file
    (relative to ``folder``, the config file's: a run's stored config is read from its
    run directory, but its teachers stay where the original config named them)."""
    spec = stage.distill.teachers[k]
    where = staging.teacher_path(stage.index, stage.distill, k)
    if spec.model in names[:stage.index]:
        index = names.index(spec.model)
        return CheckedTeacher(spec, stage=index, checked=done[index].checked)
    if spec.model in names:
        ensure_valid([config.problem(
            where, f"the teacher {spec.model!r} is this stage or a later one; a stage "
            "learns from a stage that ran before it (or from a run directory or a model "
            "file)")])
    found = staging.teacher_source(config, stage.index, stage.distill, k, folder)
    if isinstance(found, RunDir):
        return CheckedTeacher(spec, run=found, checked=check_teacher_run(found, data_dir))
    _check_teacher_file(config, where, found, spec, stage.checked)
    return CheckedTeacher(spec, file=found)


def _check_teacher_file(config: Config, where: Any, path: Path, spec: Teacher,
                        student: CheckedConfig) -> None:
    """The file loads (vetted), takes one input of the student's size (after
    ``input.size``) and gives one output over the student's classes."""
    try:
        model = load_vetted_model(path)
    except UserError as exc:
        ensure_valid([config.problem(where, f"{exc}; name a Keras model file that "
                                     "loads, a run directory or an earlier stage")])
    shape, _ = next(iter(student.input_shapes.values()))
    classes = student.data.num_classes if student.data is not None else None
    problem = teacher_problem(model, spec, shape, classes)
    del model
    if problem:
        ensure_valid([config.problem(where, f"the model file {path}: {problem}")])


def _load(path: str | Path, overrides: list[str]) -> Config:
    """The validated config; with schema problems, the model's problems are reported
    too (problems elsewhere must not hide them)."""
    try:
        return load_config(path, overrides)
    except ConfigError as exc:
        raw = exc.document.data if exc.document is not None else None
        model_raw = raw.get("model") if isinstance(raw, dict) else None
        try:
            model = ModelConfig.model_validate(model_raw)
        except Exception:  # the model section itself is reported already
            raise exc from None
        partial = Config(ConfigFile.model_construct(model=model, plugins=[]), exc.document,
                         Path(path))
        try:
            _, more = graph_problems(partial)
        except ConfigError as structural:
            more = structural.problems
        raise ConfigError(exc.problems + more, exc.document) from None


def _known_but_unprepared(dataset: str, data_dir: str | None) -> bool:
    """TFDS has a builder for ``dataset`` but no prepared copy in ``data_dir`` (a typo
    in the name or a version TFDS cannot open stay errors)."""
    import tensorflow_datasets as tfds

    try:
        return not tfds.builder(dataset, data_dir=data_dir).is_prepared()
    except Exception:  # TFDS raises several types for names it cannot open
        return False


def _split_errors(config: Config, info: Any) -> list[tuple[str, UserError]]:
    """A bad split name or slice, found now rather than after the last epoch."""
    errors = []
    for key in ("train_split", "validation_split", "test_split"):
        split = getattr(config.spec.data, key)
        try:
            if split is not None:
                info.num_examples(split)
        except UserError as exc:
            errors.append((key, exc))
    return errors


def check_teacher_run(run: RunDir, data_dir: str | None) -> CheckedConfig:
    return load_run_config(run, data_dir)


def load_run_config(run: RunDir, data_dir: str | None = None, *,
                    trust_plugins: bool = False, start_runtime: bool = False) -> CheckedConfig:
    """The config a run was started with (with its overrides and plugins), checked, on
    the TFDS data_dir it was trained on unless ``data_dir`` (``--data-dir``) says another.

    A run directory may come from elsewhere and importing a plugin runs its code, so
    the plugins it names (config.yaml's, overrides.json's) are imported only with
    ``trust_plugins``; without it, naming any is a UserError that names them."""

    overrides, plugins = run.read_overrides()
    record = run.read_record_safely()
    source, data_dir = record.config_path, data_dir or record.data_dir
    base = Path(source).parent if source else None  # plugins: relative to the original config
    if not trust_plugins:
        refuse_run_plugins(run, overrides, plugins, base)
    return check(run.config_file, overrides, plugins=plugins, data_dir=data_dir,
                 plugin_base=base, start_runtime=start_runtime)
