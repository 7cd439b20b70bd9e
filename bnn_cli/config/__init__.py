"""The config spec, in the order data flows through it:

``source`` (safe YAML with locations, command-line overrides) -> ``schema`` (the
pydantic models, located validation) -> ``plugins`` (the Python files a config names)
-> ``graph`` (blocks, defaults and ``repeat`` expanded into one node per layer) ->
``checks`` (every name and value against the registry and Keras, once, before anything
is written: a :class:`CheckedConfig`) -> ``builder`` (the Keras model and optimizer,
from the checked config) -> ``report`` (what ``bnn check`` prints).
"""

from bnn_cli.config.schema import Config, ConfigError, load_config

__all__ = ["Config", "ConfigError", "load_config"]
