"""Plugins: the Python files or modules a config (or ``--plugin``) names.

Importing a plugin is the only code a config can cause to run: it registers the
quantizers and layers the config then names. The user asked for it by naming the file.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from collections.abc import Iterable
from pathlib import Path

from bnn_cli.config.schema import Config, ensure_valid
from bnn_cli.errors import UserError


def load_plugins(config: Config, extra: Iterable[str] = (), base: Path | None = None) -> None:
    """Import a config's plugins (relative to ``base``, default the config's folder) and
    ``extra`` ones; each failure is a problem located at its entry."""
    base = base or (config.path.parent if config.path else Path.cwd())
    problems = []
    for i, plugin in enumerate([*config.spec.plugins, *extra]):
        try:
            import_plugin(plugin, base)
        except UserError as exc:
            problems.append(config.problem(("plugins", i), str(exc)))
    ensure_valid(problems)


def import_plugin(plugin: str, base: Path | None = None) -> None:
    """Import ``plugin``: a ``.py`` file (relative to ``base``, default the working
    folder) or a module name."""
    if plugin.endswith(".py") or "/" in plugin:
        _import_file(plugin, ((base or Path.cwd()) / plugin).resolve())
        return
    try:
        importlib.import_module(plugin)
    except ModuleNotFoundError as exc:
        raise UserError(f"plugin module {plugin!r} not found ({exc}); give a module on "
                        "the Python path or a path to a .py file") from None
    except UserError:
        raise
    except Exception as exc:  # a malformed name ('', '.x') or the module's own bug
        raise UserError(f"plugin module {plugin!r} cannot be imported: "
                        f"{type(exc).__name__}: {exc}; give a module on the Python path "
                        "or a path to a .py file") from None


def _import_file(plugin: str, path: Path) -> None:
    if not path.is_file():
        raise UserError(f"plugin file {plugin!r} not found (looked at {path})")
    module_name = f"bnn_plugin_{path.stem}_{abs(hash(str(path)))}"
    if module_name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:  # e.g. a file without the .py suffix
        raise UserError(f"plugin file {plugin!r} is not a Python (.py) file")
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except UserError:
        raise
    except Exception as exc:  # the plugin's own bug: say where
        del sys.modules[module_name]
        raise UserError(f"plugin {plugin!r} failed to import: "
                        f"{type(exc).__name__}: {exc}") from None
