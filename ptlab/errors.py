"""The errors every layer raises, at the bottom of ptlab's import graph.

ConfigError is the one error type for bad input: every layer raises it, and run.py turns it into one
line (`error: <key>=<value> is not allowed: <what is allowed>`) and exit code 2. RunStopped is a run
that cannot go on (exit code 1).
"""


class ConfigError(ValueError):
    """A bad configuration value: the message names the key, the value given and what is allowed."""


def one_line(error: BaseException, longest: int = 120) -> str:
    """The error's message as printed: one line, any word longer than `longest` characters (a
    3000-character key, a 5000-digit number) cut to its start and its length."""
    words = str(error).split()
    return " ".join(word if len(word) <= longest else f"{word[:60]}...({len(word)} characters){word[-1] * (word[-1] in ':;,')}"
                    for word in words)


class RunStopped(Exception):
    """A run that cannot go on (a reward function that fails, updates that stay non-finite): the
    message, one line, says where; run.py prints it and exits with code 1."""
