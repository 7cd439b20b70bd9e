"""bnn: train Binarized Neural Networks and other quantized networks from YAML configs.

The package mirrors Larq's public API (``bnn_cli.quantizers``, ``bnn_cli.layers``,
``bnn_cli.models`` ...), so Larq code ports by changing the import.

Importing the package sets ``TF_USE_LEGACY_KERAS=1`` and does not import TensorFlow,
which keeps ``bnn --help`` fast; TensorFlow is loaded when a submodule that needs it is
first used. Once tf-keras is imported, by anyone, bnn_cli's components are registered
with it, so ``import bnn_cli`` is all that ``keras.models.load_model`` needs to load a
model that bnn_cli saved.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import os
import sys
from collections.abc import Callable

# Must happen before TensorFlow is imported anywhere in the process, so that `tf.keras`
# (used by Larq and by the Larq Compute Engine converter) is the same tf-keras we use.
os.environ["TF_USE_LEGACY_KERAS"] = "1"

__version__ = "0.1.0"

_SUBMODULES = {
    "activations",
    "callbacks",
    "constraints",
    "layers",
    "math",
    "metrics",
    "models",
    "optimizers",
    "quantizers",
    "registry",
    "schedules",
}

__all__ = sorted(_SUBMODULES | {"__version__"})


class _WhenImported(importlib.abc.MetaPathFinder):
    """Runs ``then()`` once all of ``names`` have been imported, completely.

    TensorFlow and tf-keras import each other while they initialize, and TensorFlow
    probes for tf-keras with ``find_spec`` first; so each import of one of them is
    watched (not the first lookup), and ``then()`` waits until neither is half-done.
    """

    def __init__(self, names: tuple[str, ...], then: Callable[[], object]):
        self.names, self.then = names, then

    def find_spec(self, fullname, path, target=None):
        if fullname not in self.names:
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            run_module = spec.loader.exec_module

            def exec_module(module):
                run_module(module)
                self._maybe_done(fullname)

            spec.loader.exec_module = exec_module
        return spec

    def _maybe_done(self, just_run: str) -> None:
        others = [sys.modules.get(n) for n in self.names if n != just_run]
        if self in sys.meta_path and all(m is not None and not _initializing(m)
                                         for m in others):
            sys.meta_path.remove(self)
            self.then()


def _initializing(module: object) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _register_builtins() -> None:
    # bnn_cli._keras registers the built-ins once TensorFlow is in; if it is what is
    # importing TensorFlow right now, it will when it is done.
    keras_module = sys.modules.get(f"{__name__}._keras")
    if keras_module is None or not _initializing(keras_module):
        importlib.import_module(f"{__name__}._keras")
        importlib.import_module(f"{__name__}.registry").load_builtins()


_KERAS = ("tensorflow", "tf_keras")
if all(name in sys.modules for name in _KERAS):
    _register_builtins()
else:
    sys.meta_path.insert(0, _WhenImported(_KERAS, _register_builtins))


def __getattr__(name: str):
    # Lazy submodules: `import bnn_cli as bnn; bnn.quantizers.SteSign` works like Larq.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
