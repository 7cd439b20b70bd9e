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
import importlib.util
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


class _AfterImport(importlib.abc.MetaPathFinder):
    """Runs ``then()`` right after the module ``name`` has been imported (once)."""

    def __init__(self, name: str, then: Callable[[], object]):
        self.name, self.then = name, then

    def find_spec(self, fullname, path, target=None):
        if fullname != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None:
            run_module = spec.loader.exec_module

            def exec_module(module):
                run_module(module)
                self.then()

            spec.loader.exec_module = exec_module
        return spec


def _register_builtins() -> None:
    importlib.import_module(f"{__name__}.registry").load_builtins()


if "tf_keras" in sys.modules:
    _register_builtins()
else:
    sys.meta_path.insert(0, _AfterImport("tf_keras", _register_builtins))


def __getattr__(name: str):
    # Lazy submodules: `import bnn_cli as bnn; bnn.quantizers.SteSign` works like Larq.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
