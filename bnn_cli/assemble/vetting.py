"""Files from elsewhere: what bnn takes from a model file or a run directory.

Loading a Keras model file deserializes its architecture, and while it loads, Keras
imports any module the file names and calls whatever the file's names resolve to: a
``Lambda``'s function (``os.system``), a ``TFOpLambda``'s TensorFlow op
(``io.write_file``), a class from any module. Keras's ``safe_mode`` covers neither the
imports nor HDF5 files. So bnn does not look for what is known to be dangerous; it
decides what may be loaded:

- :func:`read_weights` reads only the weights of a model file (with h5py, by layer and
  shape) into a model built from a checked config; nothing in the file is deserialized.
- :func:`vet_model_file` allows a file only if every class it names resolves, by
  Keras's own lookups, to a Keras layer or component class or to a registered bnn_cli
  component; ``Lambda``, ``TFOpLambda``, ``SlicingOpLambda`` and every function
  reference are refused, and so is a file that cannot be vetted. It guards
  :func:`load_vetted_model`, the one place where bnn deserializes the architecture of
  a file it did not write, and ``bnn eval FILE --config`` refuses what it refuses too.
- A file's format is decided by its bytes, never by its name (:func:`model_format`).
- :func:`refuse_run_plugins`: a run directory names plugins (Python files) that
  evaluating or resuming it imports; from elsewhere they run only when trusted.

The tf-keras internals used here (the ``.keras`` weights layout, the legacy HDF5
layout, the class lookups) are those of tf-keras 2.21, the version bnn pins.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bnn_cli.config.schema import ConfigError, load_config
from bnn_cli.errors import UserError
from bnn_cli.rundir.run import RunDir

HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"
TFLITE_IDENTIFIER = b"TFL3"  # a flatbuffer's file identifier, at bytes 4-8
KERAS_WEIGHTS = "model.weights.h5"  # inside a .keras zip (tf-keras's saving_lib)
_ADVICE = ("bnn loads from model files only Keras layers and components and registered "
           "bnn_cli components, and never code that a file names. Evaluate the run "
           "directory the model came from instead, or, if you trust the file, load it in "
           "Python and save its weights alone (model.save_weights('weights.h5')), which "
           "`bnn eval weights.h5 --config CONFIG.yaml` reads")


# ---------------------------------------------------------------------------------------
# The format
# ---------------------------------------------------------------------------------------


def model_format(path: Path) -> str:
    """What a model file is, decided by its bytes, never its name: ``"hdf5"``, ``"zip"``
    (a ``.keras`` archive), ``"tflite"`` (a flatbuffer) or ``"saved_model"`` (a folder).

    The one detector of model files (``bnn eval``, ``export``, ``predict``, ``benchmark-model``
    and the runtimes all ask it). HDF5 finds its signature at offset 0 or after a user
    block (512, 1024, 2048, ...), whatever comes after it, so a file with that signature is
    HDF5 even with a zip appended (Python's zipfile reads a zip from the end and would see
    one too)."""
    if path.is_dir():
        if (path / "saved_model.pb").is_file():
            return "saved_model"
        raise UserError(f"{path} is a folder without saved_model.pb, so not a SavedModel; "
                        "pass a .keras, .h5 or .tflite file or a SavedModel folder")
    try:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if f.read(8)[4:8] == TFLITE_IDENTIFIER:
                return "tflite"
            offset = 0
            while offset + len(HDF5_SIGNATURE) <= size:
                f.seek(offset)
                if f.read(len(HDF5_SIGNATURE)) == HDF5_SIGNATURE:
                    return "hdf5"
                offset = 512 if offset == 0 else offset * 2
        if zipfile.is_zipfile(path):
            return "zip"
    except OSError as exc:
        raise UserError(f"cannot read the model file {path}: {exc.strerror or exc}") from None
    raise UserError(f"{path} is not a model file: it is neither HDF5 (.h5, .hdf5) nor a zip "
                    "archive (.keras), a .tflite flatbuffer or a SavedModel folder")


def keras_format(path: Path) -> str:
    """:func:`model_format` of a file that must be a Keras model (``"hdf5"`` or ``"zip"``)."""
    fmt = model_format(path)
    if fmt not in ("hdf5", "zip"):
        raise UserError(f"{path} is a {fmt} file, not a Keras model file (.keras, .h5): "
                        "weights and models are read from .keras and .h5 files only")
    return fmt


def _text(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# ---------------------------------------------------------------------------------------
# Weights only
# ---------------------------------------------------------------------------------------


def read_weights(model: Any, path: Path) -> None:
    """Set the weights of ``model`` (built from a checked config) from the model file
    ``path``: a ``.keras`` zip's ``model.weights.h5`` or an HDF5 file's ``model_weights``
    (or a weights-only HDF5 file), read with h5py and matched to the model's layers as
    tf-keras stores them (HDF5: by layer name; ``.keras``: by the path tf-keras derives
    from each layer's class and order), each layer's weights in order and checked for
    their shapes. Nothing in the file is deserialized. Every
    layer that does not fit (no weights in the file, another number or shape of
    weights) is named in one UserError; then the model is left unchanged."""
    import h5py

    fmt = keras_format(path)
    try:
        with contextlib.ExitStack() as stack:
            if fmt == "hdf5":
                found, problems = _hdf5_weights(model, stack.enter_context(h5py.File(path, "r")))
            else:
                found, problems = _keras_weights(model, _open_keras_weights(path, stack))
            if problems:
                more = f" (and {len(problems) - 8} more)" if len(problems) > 8 else ""
                raise UserError(f"the weights in {path} do not fit the config's model: "
                                + "; ".join(problems[:8]) + more
                                + ". Was the file saved from a model of another config?")
            values = [(layer, [ds[()] for ds in datasets]) for layer, datasets in found]
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - h5py and zipfile fail in many ways on bad files
        raise UserError(f"cannot read the weights in {path}: {type(exc).__name__}: "
                        f"{str(exc)[:300]}") from None
    for layer, arrays in values:  # (only now: a model that does not fit stays as it was)
        _assign(layer, arrays, fmt)


def _open_keras_weights(path: Path, stack: contextlib.ExitStack) -> Any:
    import h5py

    archive = stack.enter_context(zipfile.ZipFile(path))
    if KERAS_WEIGHTS not in archive.namelist():
        raise UserError(f"{path} holds no {KERAS_WEIGHTS}, so it has no weights bnn can "
                        "read (a .keras file saved with weights_format='npz'?)")
    return stack.enter_context(h5py.File(stack.enter_context(archive.open(KERAS_WEIGHTS)),
                                         "r"))


def _assign(layer: Any, arrays: list[Any], fmt: str) -> None:
    from bnn_cli._keras import keras  # (lazy: vetting needs no TF)

    if fmt == "hdf5":
        keras.backend.batch_set_value(list(zip(_legacy_weights(layer), arrays, strict=True)))
    else:  # Keras's own inverse of what it saved for the layer
        layer.load_own_variables({str(i): a for i, a in enumerate(arrays)})


def _label(layer: Any) -> str:
    return f"layer {layer.name!r} ({type(layer).__name__})"


def _fit(layer: Any, datasets: list[Any], shapes: list[tuple[int, ...]]) -> list[str]:
    """Problems of the file's ``datasets`` for a layer whose weights have ``shapes``."""
    import h5py

    if len(datasets) != len(shapes):
        return [f"{_label(layer)}: the file has {len(datasets)} weight(s) for it, the "
                f"config's model {len(shapes)}"]
    problems = []
    for i, (ds, shape) in enumerate(zip(datasets, shapes, strict=True)):
        if not isinstance(ds, h5py.Dataset) or ds.dtype.kind not in "biuf":
            problems.append(f"{_label(layer)}: weight {i} in the file is not an array of "
                            "numbers")
        elif tuple(ds.shape) != tuple(shape):
            problems.append(f"{_label(layer)}: weight {i} has shape {tuple(ds.shape)} in "
                            f"the file but {tuple(shape)} in the config's model")
    return problems


def _legacy_weights(layer: Any) -> list[Any]:
    from tf_keras.src.saving.legacy import hdf5_format

    return hdf5_format._legacy_weights(layer)  # what Keras's HDF5 format stores per layer


def _hdf5_weights(model: Any, f: Any) -> tuple[list[tuple[Any, list[Any]]], list[str]]:
    """tf-keras's HDF5 layout (legacy/hdf5_format.py): ``model_weights/<layer name>``
    with the attribute ``weight_names`` (in the layer's order) naming its datasets."""
    import h5py

    group = f.get("model_weights", f)  # (a file of save_weights: at the top)
    if "layer_names" not in group.attrs:
        return [], ["the file holds no Keras weights (no model_weights group)"]
    names = [_text(n) for n in group.attrs["layer_names"]]
    found, problems = [], []
    for layer in model.layers:
        weights = _legacy_weights(layer)
        if not weights:
            continue
        layer_group = group.get(layer.name) if layer.name in names else None
        if not isinstance(layer_group, h5py.Group):
            problems.append(f"{_label(layer)}: the file has no weights for it")
            continue
        datasets = [layer_group.get(_text(n)) for n in layer_group.attrs.get("weight_names", [])]
        problems += _fit(layer, datasets, [tuple(w.shape.as_list()) for w in weights])
        found.append((layer, datasets))
    ours = {layer.name for layer in model.layers}
    problems += [f"the file has weights for a layer {name!r} that the config's model does "
                 "not have" for name in names
                 if name not in ours and isinstance(group.get(name), h5py.Group)
                 and len(group[name].attrs.get("weight_names", []))]
    return found, problems


def _keras_weights(model: Any, f: Any) -> tuple[list[tuple[Any, list[Any]]], list[str]]:
    """tf-keras's ``.keras`` layout (saving_lib.py): each layer's own variables under
    ``<path>/vars/0, 1, ...``, the path as :func:`_keras_paths` works it out."""
    import h5py

    from bnn_cli._keras import keras  # (lazy: vetting needs no TF)

    found, problems, ours = [], [], set()
    for where, layer in _keras_paths(model):
        if not isinstance(layer, keras.layers.Layer) or isinstance(layer, keras.metrics.Metric):
            continue  # the optimizer's and the metrics' state: not needed to evaluate
        ours.add(where)
        expected: dict[str, Any] = {}
        layer.save_own_variables(expected)  # what Keras stores for this layer
        if not expected:
            continue
        group = f.get(f"{where}/vars")
        if not isinstance(group, h5py.Group):
            problems.append(f"{_label(layer)}: the file has no weights for it (at {where})")
            continue
        keys = sorted(group, key=_index)
        if keys != [str(i) for i in range(len(keys))]:
            problems.append(f"{_label(layer)}: the weights at {where} are not numbered "
                            "0, 1, ...")
            continue
        datasets = [group[k] for k in keys]
        problems += _fit(layer, datasets, [a.shape for a in expected.values()])
        found.append((layer, datasets))
    layers = f.get("layers")
    for name in layers if isinstance(layers, h5py.Group) else []:
        stored = layers[name].get("vars") if isinstance(layers[name], h5py.Group) else None
        if f"layers/{name}" not in ours and stored is not None and len(stored):
            problems.append(f"the file has weights for a layer (at layers/{name}) that the "
                            "config's model does not have")
    return found, problems


def _index(key: str) -> tuple[int, str]:
    return (int(key), key) if key.isdigit() else (sys.maxsize, key)


def _keras_paths(model: Any) -> Iterator[tuple[str, Any]]:
    """Every object of ``model`` whose state a ``.keras`` file stores, with its path in
    the file: saving_lib's own walk (``_save_state``), with its helpers: attributes in
    its order, list items by snake-case class name numbered from the second one, each
    object at the first path that reaches it."""
    from tf_keras.src.saving import saving_lib
    from tf_keras.src.utils import generic_utils

    seen: set[int] = set()

    def visit(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
        if id(obj) in seen:
            return
        seen.add(id(obj))
        yield path, obj
        for attr, child in saving_lib._walk_trackable(obj):
            child_path = f"{path}/{attr}" if path else attr
            if saving_lib._is_keras_trackable(child):
                yield from visit(child, child_path)
            elif isinstance(child, (list, dict, tuple, set)):
                yield from visit_items(child, child_path)

    def visit_items(items: Any, path: str) -> Iterator[tuple[str, Any]]:
        used: dict[str, int] = {}
        for item in items.values() if isinstance(items, dict) else items:
            if not saving_lib._is_keras_trackable(item) or id(item) in seen:
                continue
            name = generic_utils.to_snake_case(type(item).__name__)
            used[name] = used.get(name, -1) + 1
            yield from visit(item, f"{path}/{name}" + (f"_{used[name]}" if used[name] else ""))

    yield from visit(model, "")


# ---------------------------------------------------------------------------------------
# Vetting an architecture
# ---------------------------------------------------------------------------------------


class _Refusal(Exception):
    """What is wrong with one entry of a model file's architecture."""


# Values that Keras builds from an entry without looking a class up: a constant, an
# array, bytes (serialization_lib, before any lookup) ...
_VALUES = ("__tensor__", "__numpy__", "__bytes__")
# ... and what the HDF5 loader's JSON decoder (json_utils.decode) turns into a value; in a
# .keras file an entry with a "config" is looked up as a class, so only without one.
_LEGACY_VALUES = ("TensorShape", "__tuple__", "__ellipsis__")


def vet_model_file(path: Path, *, shown: Path | None = None) -> None:
    """Refuse the model file ``path`` (a UserError naming the layer and the reason)
    unless everything its stored architecture names may be loaded: each class resolves,
    by Keras's rules, to a Keras layer or component class or to a registered bnn_cli
    component (plugins' included), and nothing is a function or a Lambda. The format
    comes from the bytes; any failure while vetting refuses the file. Messages name
    ``shown`` (default ``path``)."""
    from bnn_cli.registry import keras_scope  # (lazy: vetting needs no TF)

    shown = shown or path
    try:
        stored = _stored_architecture(path)
        with keras_scope():  # the names resolve as they do when bnn loads a file
            lookups = _Lookups()
            for config in stored:
                for node, where in _class_nodes(config):
                    try:
                        lookups.vet(node)
                    except _Refusal as refusal:
                        raise UserError(f"refusing the model file {shown}: {where} {refusal}. "
                                        f"{_ADVICE}") from None
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - fail closed: what cannot be vetted is refused
        raise UserError(f"refusing the model file {shown}: it cannot be vetted "
                        f"({type(exc).__name__}: {str(exc)[:300]}). {_ADVICE}") from None


def _stored_architecture(path: Path) -> list[Any]:
    """The JSON a model file stores about its classes: a zip's ``config.json``, an HDF5
    file's ``model_config`` and ``training_config`` (absent in weights-only files)."""
    import h5py

    if keras_format(path) == "zip":
        with zipfile.ZipFile(path) as archive:
            if "config.json" not in archive.namelist():
                return []
            return [json.loads(archive.read("config.json"))]
    with h5py.File(path, "r") as f:
        return [json.loads(_text(f.attrs[key])) for key in ("model_config", "training_config")
                if key in f.attrs]


def _class_nodes(config: Any) -> Iterator[tuple[dict, str]]:
    """Every mapping in ``config`` that names a class (``class_name``), with the layer
    it belongs to (``layer 'conv', its kernel_constraint``) for messages."""
    stack: list[tuple[Any, str, Any]] = [(config, "the model", None)]
    while stack:
        node, where, key = stack.pop()
        if isinstance(node, list):
            stack.extend((item, _layer_where(item) if key == "layers" else where, key)
                         for item in reversed(node))
        elif isinstance(node, dict):
            if "class_name" in node:
                if key not in (None, "layers", "config"):
                    where = f"{where}, its {key}"
                yield node, where
            stack.extend((value, where, k) for k, value in reversed(list(node.items())))


def _layer_where(item: Any) -> str:
    if not isinstance(item, dict):
        return "a layer"
    inner = item.get("config")
    name = item.get("name") or (inner.get("name") if isinstance(inner, dict) else None)
    return f"layer {name!r}" if isinstance(name, str) else "a layer"


class _Lookups:
    """Keras's ways from a class entry to an object, and what may be loaded."""

    def __init__(self) -> None:
        # (lazy: vetting a file needs no TF, only loading one does)
        from bnn_cli._keras import keras
        from bnn_cli.registry import KINDS, REGISTRY, NamedActivation, keras_objects

        self.code_layers = _code_layers()
        allowed = [e.obj for kind in KINDS for e in REGISTRY.entries(kind)]
        allowed += [*keras_objects().values(), NamedActivation, keras.Model, keras.Sequential,
                    _functional()]
        self.allowed = {id(obj) for obj in allowed} - {id(c) for c in self.code_layers}
        self.tables = _keras_tables()

    def vet(self, node: dict) -> None:
        """Raise a _Refusal unless ``node`` resolves only to objects that may be loaded."""
        name = node.get("class_name")
        if name == "__typespec__":  # Keras looks its spec_name up as a class
            name = node.get("spec_name")
        if name in ("function", "__lambda__"):
            raise _Refusal(_function_reason(node))
        if name in _VALUES or (name in _LEGACY_VALUES and "config" not in node):
            return
        if not isinstance(name, str):
            raise _Refusal(f"has a class_name that is not a name ({name!r})")
        objects, unheld = self._candidates(node, name)
        for obj in objects:
            self._allow(obj, name)
        if unheld:
            raise _Refusal(f"names {name!r} of the module {node.get('module')!r}, which "
                           "has no such class")
        if not objects:
            raise _Refusal(f"names {name!r}, which is neither a Keras class nor a "
                           "registered bnn_cli component")
        if len({id(obj) for obj in objects}) > 1:
            raise _Refusal(f"names different classes by its class_name, registered_name and "
                           f"module ({', '.join(_describe(o) for o in objects)})")

    def _candidates(self, node: dict, name: str) -> tuple[list[Any], bool]:
        """Every object that Keras may resolve ``node`` to, on any of its paths: the new
        format's (``serialization_lib._retrieve_class_or_fn``: the registered name, else
        the module the entry names), the legacy HDF5 format's (the class name among the
        registered objects) and a deserializer's own table (``module_objects``); and
        whether the module the entry names lacks the class where Keras would look there.
        A module that is loaded must hold what the entry resolves to."""
        from bnn_cli._keras import keras  # (lazy: vetting needs no TF)

        registered = node.get("registered_name", name)
        by_registered = (keras.saving.get_registered_object(registered)
                         if isinstance(registered, str) else None)
        found = [by_registered, keras.saving.get_registered_object(name),
                 *(table.get(name) for table in self.tables)]
        module, unheld = node.get("module"), False
        if module is not None:
            in_module = self._in_module(name, registered, module,
                                        imported=by_registered is None)
            unheld = in_module is None and by_registered is None
            # Keras reads the module only where the registered name resolves to nothing
            # (`_retrieve_class_or_fn`): another library's component kept there under the
            # name (Larq's `weight_clip`, Larq sharing the process) is never used. Anything
            # else there is refused all the same (fail closed).
            if by_registered is None or not _component_class(in_module):
                found.append(in_module)
        return [obj for obj in found if obj is not None], unheld

    @staticmethod
    def _in_module(name: str, registered: Any, module: Any, *, imported: bool) -> Any:
        """``_retrieve_class_or_fn`` after its registry lookup, without importing: Keras's
        exported API names, then the attributes of the module if it is loaded. A module
        that is not loaded is refused if Keras would import it (``imported``); else
        (the registered name wins) Keras never looks at it: None.

        (A plugin's module is named anew in each process, so an entry saved with one
        names a module that is not loaded; its registered name is what Keras uses.)"""
        from tf_keras.src.saving import serialization_lib

        if not isinstance(module, str) or not module:
            raise _Refusal(f"names a module that is not a name ({module!r})")
        if module in ("keras", "tf_keras") or module.startswith(("keras.", "tf_keras.")):
            api = f"{module}.{name}"
            api = f"compat.v1.{api}" if "__internal__.legacy" in api else api
            obj = serialization_lib.tf_export.get_symbol_from_name(api)
            if obj is not None:
                return obj
        real = f"tf_{module}" if module.startswith("keras") else module
        if sys.modules.get(real) is None:
            if imported:
                raise _Refusal(f"names the Python module {module!r}, which Keras would "
                               "import (running its code)")
            return None
        attrs = vars(sys.modules[real])
        obj = attrs.get(name)
        if obj is None:
            if isinstance(registered, str):
                obj = attrs.get(registered)
            if name.count(".") == 1:  # a __qualname__
                outer, inner = name.split(".")
                obj = getattr(attrs.get(outer), inner, None) if outer in attrs else None
        return obj

    def _allow(self, obj: Any, name: str) -> None:
        as_named = "" if getattr(obj, "__name__", name) == name else f" (class_name {name!r})"
        if any(obj is c for c in self.code_layers):
            raise _Refusal(f"is a {obj.__name__} layer{as_named}, which calls a function "
                           "that the file names")
        if id(obj) not in self.allowed and not _keras_component(obj):
            raise _Refusal(f"names {_describe(obj)}{as_named}, which is neither a Keras layer "
                           "or component class nor a registered bnn_cli component")


def _function_reason(node: dict) -> str:
    if node.get("class_name") == "__lambda__":
        return "holds Python code (a serialized lambda)"
    module = node.get("module")
    where = f" of the module {module!r}" if module else ""
    return (f"refers to the Python function {node.get('config')!r}{where}; model files may "
            "name classes, never functions")


def _describe(obj: Any) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)
    return f"{module}.{name}" if module and name else repr(obj)[:100]


def _code_layers() -> tuple[type, ...]:
    """The Keras layers that call a function their config names."""
    from tf_keras.src.layers.core.lambda_layer import Lambda
    from tf_keras.src.layers.core.tf_op_layer import SlicingOpLambda, TFOpLambda

    return Lambda, TFOpLambda, SlicingOpLambda


def _functional() -> type:
    from tf_keras.src.engine.functional import Functional

    return Functional


def _keras_component(obj: Any) -> bool:
    """A tf-keras class of a kind that a model's config holds besides layers."""

    return (isinstance(obj, type) and obj.__module__.startswith("tf_keras.")
            and issubclass(obj, _component_bases()))


def _component_bases() -> tuple[type, ...]:
    """The Keras base classes of what a model's config holds besides layers."""
    from bnn_cli._keras import keras  # (lazy: vetting needs no TF)

    return (keras.initializers.Initializer, keras.regularizers.Regularizer,
            keras.constraints.Constraint, keras.losses.Loss, keras.metrics.Metric,
            keras.optimizers.Optimizer, keras.optimizers.legacy.Optimizer,
            keras.optimizers.schedules.LearningRateSchedule, keras.mixed_precision.Policy)


def _component_class(obj: Any) -> bool:
    """Any library's Keras layer or component class (what a model config may name)."""
    from bnn_cli._keras import keras  # (lazy: vetting needs no TF)

    return isinstance(obj, type) and issubclass(obj, (keras.layers.Layer, *_component_bases()))


def _keras_tables() -> list[dict[str, Any]]:
    """The tables Keras's deserializers look class names up in (``module_objects``)."""
    import importlib

    from tf_keras.src import initializers
    from tf_keras.src.layers import serialization as layers

    layers.populate_deserializable_objects()
    initializers.populate_deserializable_objects()
    modules = ("regularizers", "constraints", "losses", "metrics", "activations",
               "optimizers.schedules.learning_rate_schedule")
    return [layers.LOCAL.ALL_OBJECTS, initializers.LOCAL.ALL_OBJECTS,
            *(vars(importlib.import_module(f"tf_keras.src.{m}")) for m in modules)]


# ---------------------------------------------------------------------------------------
# Loading a vetted architecture
# ---------------------------------------------------------------------------------------


def load_vetted_model(path: Path) -> Any:
    """The Keras model in the file ``path``, loaded only after :func:`vet_model_file`
    allowed it, without compiling. The file is copied first and the copy is vetted and
    loaded, under the suffix its bytes call for (Keras picks the format by the suffix),
    so what is loaded is what was vetted."""
    from bnn_cli import models  # (lazy: vetting needs no TF)

    suffix = ".h5" if keras_format(path) == "hdf5" else ".keras"
    with tempfile.TemporaryDirectory(prefix="bnn-vetted-") as folder:
        copy = Path(folder) / f"model{suffix}"
        try:
            shutil.copyfile(path, copy)
        except OSError as exc:
            raise UserError(f"cannot read the model file {path}: {exc.strerror or exc}") \
                from None
        vet_model_file(copy, shown=path)
        try:
            return models.load_model(copy, compile=False, safe_mode=True)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            raise UserError(f"cannot load the model file {path}: {type(exc).__name__}: "
                            f"{first}") from None


# ---------------------------------------------------------------------------------------
# A run directory's plugins
# ---------------------------------------------------------------------------------------


def refuse_run_plugins(run: RunDir, overrides: list[str], plugins: list[str],
                       base: Path | None) -> None:
    """A UserError naming the plugins that checking ``run``'s stored config would import
    (its ``plugins:`` after ``overrides``, and overrides.json's ``plugins``), if any.

    A run directory may come from elsewhere, and importing a plugin runs its code, so
    a run's plugins are imported only when the user says they trust them. The config is
    read here without importing anything."""

    config_file = run.config_file
    try:
        named = list(load_config(config_file, overrides).spec.plugins)
    except ConfigError:  # checking stops at these problems, before importing anything
        named = []
    named += list(plugins)
    if not named:
        return
    base = base or config_file.parent  # (as load_plugins defaults it)
    raise UserError(f"{run.path} names plugins that evaluating or resuming it imports, "
                    f"which runs their code: {', '.join(_plugin_place(p, base) for p in named)}. "
                    "A run directory from elsewhere could run any code this way, so bnn "
                    "imports a run's plugins only with --trust-plugins; add it if you trust "
                    "these files")


def _plugin_place(plugin: str, base: Path) -> str:
    # Where import_plugin looks: a .py file or a path, relative to base; else a module.
    if plugin.endswith(".py") or "/" in plugin:
        return str((base / plugin).resolve())
    return f"the module {plugin!r}"
