"""The bottom of ptlab's import graph: what every layer shares about configuration.

ConfigError is the one error type for bad input. Every layer raises it, run.py turns it into one
line (`error: <key>=<value> ...: <what is allowed>`) and exit code 2.
"""


class ConfigError(ValueError):
    """A bad configuration value: the message names the key, the value given and what is allowed."""
