"""YAML -> a validated :class:`Config`, in the order data flows through it:

``source`` (safe YAML with locations, ``extends``, command-line overrides) -> ``schema``
(the pydantic models, located validation) -> ``plugins`` (the Python files a config
names) -> ``graph`` (blocks, defaults and ``repeat`` expanded into one node per layer) ->
``checks`` (every name and value against the registry and Keras; ``argtypes``, the types
layer arguments take) and ``stages``. ``monitor`` is the one monitor rule; ``flat`` the
flat key paths runs are compared by. :mod:`bnn_cli.assemble.check` adds the data and
the stages' teachers and gives the checked config.
"""

from bnn_cli.config.schema import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
