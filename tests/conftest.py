"""Shared test setup.

Larq (a test-only reference oracle) and bnn_cli both register plain names such as
``"ste_sign"`` in Keras's global custom objects, and whichever is imported last wins.
Importing Larq here, before any test module imports bnn_cli, makes bnn_cli's names the
ones Keras resolves throughout the session. Differential tests build Larq objects from
explicit Larq classes, never from strings.
"""

import contextlib
import os

os.environ["TF_USE_LEGACY_KERAS"] = "1"

# larq is a test extra; the tests that need it skip without it.
with contextlib.suppress(ImportError):
    import larq  # noqa: F401
