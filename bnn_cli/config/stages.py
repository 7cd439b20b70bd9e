"""Multi-stage configs: ``stages:`` -> one complete, checked config per stage.

Each stage is the config file with the stage's ``set`` applied (``KEY.PATH: VALUE``, the
language of command-line overrides) and then the command line's own overrides, which so
apply to every stage (``training.epochs=1`` shortens them all). A value a stage sets
keeps its place in the file, so a problem in it is reported at its line. Distillation
teachers are resolved and checked here too: an earlier stage's config, or a run
directory's stored config.
"""

from __future__ import annotations

import copy
from pathlib import Path

from bnn_cli.config.graph import Graph
from bnn_cli.config.schema import Config, ConfigError, Distill, Problem, validate
from bnn_cli.config.source import (
    Document,
    PathKey,
    apply_overrides,
    load_config_document,
    parse_override_path,
    set_path,
)
from bnn_cli.errors import UserError, did_you_mean
from bnn_cli.rundir.run import RunDir


def stage_document(path: str | Path, index: int, overrides: list[str]) -> Document:
    """The config file as stage ``index`` sees it (without ``stages``)."""
    whole = load_config_document(path)
    apply_overrides(whole, overrides)  # (the stages may come from the command line)
    stage = whole.data["stages"][index]
    prefix: PathKey = ("stages", index, "set")
    raw = {p: loc for p, loc in whole.values.items() if p[:3] == prefix}
    raw_keys = {p: loc for p, loc in whole.keys.items() if p[:3] == prefix}
    doc = load_config_document(path)
    doc.data = {k: v for k, v in doc.data.items() if k != "stages"}
    _forget(doc, ("stages",))
    for key, value in (stage.get("set") or {}).items():
        where = raw_keys.get((*prefix, key)) or raw.get((*prefix, key))
        try:
            target, _ = set_path(doc, parse_override_path(str(key)), copy.deepcopy(value),
                                 f"stages[{index}].set.{key}")
        except UserError as exc:
            raise UserError(f"{where}: stages[{index}].set: {exc}") from None
        _forget(doc, target)
        for p, loc in raw.items():  # the set value's parts keep their lines in the file
            if p[:4] == (*prefix, key):
                doc.values[(*target, *p[4:])] = loc
    apply_overrides(doc, [o for o in overrides if not o.strip().startswith("stages")])
    return doc


def _forget(doc: Document, path: PathKey) -> None:
    """Drop the recorded locations at and below ``path`` (replaced or removed values)."""
    n = len(path)
    for table in (doc.values, doc.keys):
        for p in [p for p in table if p[:n] == path]:
            del table[p]


def stage_config(path: str | Path, index: int, overrides: list[str]) -> Config:
    return validate(stage_document(path, index, overrides), Path(path))


def teacher_path(index: int, distill: Distill, k: int) -> PathKey:
    """Where teacher ``k`` of stage ``index`` is written: ``teacher`` (one name) or
    ``teacher[k].model``."""
    where: PathKey = ("stages", index, "distill", "teacher")
    return where if isinstance(distill.teacher, str) else (*where, k, "model")


def distill_problems(config: Config, index: int, distill: Distill, student: Graph,
                     teachers: list[Graph | None]) -> list[Problem]:
    """Logits for the KL term and the attention layers, in the student and the teachers
    built from configs (a model file's teacher is checked as it is loaded)."""
    where: PathKey = ("stages", index, "distill")
    problems = []
    if len(teachers) > 1 and distill.attention:
        problems.append(config.problem(
            (*where, "attention"), "attention transfer compares the student with one "
            "teacher, but this stage has several; keep one teacher or drop attention"))
    roles = [("student", student)] + [(f"teacher {distill.teachers[k].model!r}", g)
                                      for k, g in enumerate(teachers) if g is not None]
    if distill.kd_weight > 0:
        for role, graph in roles:
            if not _ends_in_softmax(graph):
                problems.append(config.problem(
                    (*where, "kd_weight"),
                    f"distillation compares logits, so the {role} model must end with "
                    "{type: Activation, activation: softmax} or {type: Softmax} (its input "
                    "is the logits); end it so, or set kd_weight: 0"))
    if len(teachers) == 1 and teachers[0] is not None:
        problems += _attention_problems(config, where, distill, student, teachers[0])
    return problems


def _attention_problems(config: Config, where: PathKey, distill: Distill, student: Graph,
                        teacher: Graph) -> list[Problem]:
    names = {"student": {n.name for n in student.nodes},
             "teacher": {n.name for n in teacher.nodes}}
    problems = []
    for i, pair in enumerate(distill.attention):
        for role in ("student", "teacher"):
            name = getattr(pair, role) or pair.student
            if name not in names[role]:
                problems.append(config.problem(
                    (*where, "attention", i, role if getattr(pair, role) else "student"),
                    f"the {role} model has no layer {name!r}"
                    f"{did_you_mean(name, names[role])}"))
    return problems


def _ends_in_softmax(graph: Graph) -> bool:
    if len(graph.outputs) != 1:
        return False
    node = next(n for n in graph.nodes if n.name == graph.outputs[0])
    return node.type == "Softmax" or (node.type == "Activation"
                                      and node.args.get("activation") == "softmax")


MODEL_SUFFIXES = (".h5", ".hdf5", ".keras")


def teacher_source(config: Config, index: int, distill: Distill, k: int,
                   folder: Path | None = None) -> RunDir | Path:
    """The run directory or Keras model file that teacher ``k`` names, relative to
    ``folder`` (default: the config's)."""
    name = distill.teachers[k].model
    path = Path(name).expanduser()
    folder = folder or (config.path.parent if config.path is not None else None)
    if not path.is_absolute() and folder is not None:
        path = folder / path
    if RunDir.is_run(path):
        return RunDir.open(path)
    if path.is_file() and path.suffix.lower() in MODEL_SUFFIXES:
        return path
    problem = config.problem(teacher_path(index, distill, k), "")
    why = (f"{path} is a file but not a Keras model file ({', '.join(MODEL_SUFFIXES)})"
           if path.is_file() else f"{path} has no run.json" if path.is_dir()
           else f"there is no {path}")
    raise ConfigError([Problem(
        problem.path, f"{name!r} is neither an earlier stage of this config, a run "
        f"directory nor a Keras model file ({why}); name a stage above this one, a run "
        "directory that `bnn train` wrote, or an .h5/.keras file (relative to the "
        "config's folder)", problem.location)])
