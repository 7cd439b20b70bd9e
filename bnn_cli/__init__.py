"""bnn: train Binarized Neural Networks and other quantized networks from YAML configs.

The package mirrors Larq's public API (``bnn_cli.quantizers``, ``bnn_cli.layers``,
``bnn_cli.models`` ...), so Larq code ports by changing the import.

Importing the package sets ``TF_USE_LEGACY_KERAS=1`` (and, unless set,
``TF_ENABLE_ONEDNN_OPTS=1``) and does not import TensorFlow,
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

# Must happen before TensorFlow is imported anywhere in the process, so that `tf.keras`
# (used by Larq and by the Larq Compute Engine converter) is the same tf-keras we use.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
# TensorFlow turns its oneDNN kernels on by itself only on CPUs with AVX-512 VNNI, BF16
# or AMX; elsewhere (an AVX2 machine) its own convolution gradients run about 2x slower.
# The default here turns them on everywhere; TF_ENABLE_ONEDNN_OPTS=0 turns them off.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

__version__ = "0.1.0"

_SUBMODULES = {
    "activations",
    "callbacks",
    "constraints",
    "context",
    "layers",
    "math",
    "metrics",
    "models",
    "optimizers",
    "quantized_variable",
    "quantizers",
    "registry",
    "schedules",
    "utils",
}

# The Python API (:mod:`bnn_cli.api`), loaded on first use: `bnn_cli.train(...)`.
_API = {"Run", "UserError", "check", "evaluate", "export", "predict", "resume", "train"}

__all__ = sorted(_SUBMODULES | _API | {"__version__"})


class _RegisterBuiltins(importlib.abc.MetaPathFinder):
    """Registers bnn_cli's built-in components once Keras is in and no import is half-done.

    The one trigger of :func:`bnn_cli.registry.load_builtins`, which imports every module
    that defines built-ins: ``keras.models.load_model`` must find all of them whichever
    bnn_cli module a user imported, or none (``import bnn_cli`` before TensorFlow).
    Registering in the middle of an import would re-enter a half-initialized module (a
    user's ``import bnn_cli.layers`` imports TensorFlow before ``layers`` defines its
    names), so this finder watches each import of TensorFlow, tf-keras and bnn_cli's
    own modules, and registers after the last of them has finished running.
    """

    def find_spec(self, fullname, path, target=None):
        if fullname not in _KERAS and not fullname.startswith(f"{__name__}."):
            return None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None and spec.loader is not None:
            run_module = spec.loader.exec_module

            def exec_module(module):
                run_module(module)
                self.maybe_register(done=fullname)  # (still marked as initializing)

            spec.loader.exec_module = exec_module
        return spec

    def maybe_register(self, done: str = "") -> None:
        if self in sys.meta_path and _keras_is_in(done) and not _half_imported(done):
            sys.meta_path.remove(self)
            importlib.import_module(f"{__name__}.registry").load_builtins()


_KERAS = ("tensorflow", "tf_keras")


def _initializing(module: object) -> bool:
    return bool(getattr(getattr(module, "__spec__", None), "_initializing", False))


def _keras_is_in(done: str) -> bool:
    return all(name in sys.modules and (name == done or not _initializing(sys.modules[name]))
               for name in _KERAS)


def _half_imported(done: str) -> bool:
    """Whether a bnn_cli module other than ``done`` (and this package's ``__init__``) is
    still running."""
    return any(_initializing(module) for name, module in list(sys.modules.items())
               if name.startswith(f"{__name__}.") and name != done)


_REGISTER = _RegisterBuiltins()
sys.meta_path.insert(0, _REGISTER)
_REGISTER.maybe_register()  # TensorFlow and tf-keras may be in already


def __getattr__(name: str):
    # Lazy submodules: `import bnn_cli as bnn; bnn.quantizers.SteSign` works like Larq.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _API:
        return getattr(importlib.import_module(f"{__name__}.api"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
