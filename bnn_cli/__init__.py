"""bnn: train Binarized Neural Networks and other quantized networks from YAML configs.

The package mirrors Larq's public API (``bnn_cli.quantizers``, ``bnn_cli.layers``,
``bnn_cli.models`` ...), so Larq code ports by changing the import.

Importing the package only sets ``TF_USE_LEGACY_KERAS=1``; TensorFlow itself is loaded
when a submodule that needs it is first used, which keeps ``bnn --help`` and config
validation fast.
"""

from __future__ import annotations

import importlib
import os

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
}

__all__ = sorted(_SUBMODULES | {"__version__"})


def __getattr__(name: str):
    # Lazy submodules: `import bnn_cli as bnn; bnn.quantizers.SteSign` works like Larq.
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
