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


def distill_problems(config: Config, index: int, distill: Distill, student: Graph,
                     teacher: Graph) -> list[Problem]:
    """Logits for the KL term and the attention layers, in the student and the teacher."""
    where: PathKey = ("stages", index, "distill")
    problems = []
    if distill.kd_weight > 0:
        for role, graph in (("student", student), ("teacher", teacher)):
            if not _ends_in_softmax(graph):
                problems.append(config.problem(
                    (*where, "kd_weight"),
                    f"distillation compares logits, so the {role} model must end with "
                    "{type: Activation, activation: softmax} or {type: Softmax} (its input "
                    "is the logits); end it so, or set kd_weight: 0"))
    names = {"student": {n.name for n in student.nodes},
             "teacher": {n.name for n in teacher.nodes}}
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


def teacher_run(config: Config, index: int, distill: Distill) -> RunDir:
    """The run directory a stage's teacher names (relative to the config's folder)."""

    folder = Path(distill.teacher).expanduser()
    if not folder.is_absolute() and config.path is not None:
        folder = config.path.parent / folder
    problem = config.problem(("stages", index, "distill", "teacher"), "")
    if not RunDir.is_run(folder):
        raise ConfigError([Problem(
            problem.path, f"{distill.teacher!r} is neither an earlier stage of this config "
            f"nor a run directory ({folder} has no run.json); name a stage above this one "
            "or a run directory that `bnn train` wrote (relative to the config's folder)",
            problem.location)])
    return RunDir.open(folder)
