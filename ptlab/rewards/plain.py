"""Your own reward as a plain Python function, the way TRL takes one.

    # my_reward.py, anywhere
    def correct(completions, answer, **kwargs):
        return [1.0 if c.strip() == a else 0.0 for c, a in zip(completions, answer)]

    python run.py reward=my_reward.py:correct

The function gets the completions and the rows' fields as keyword arguments, one list per field
(`prompts`, `answer`, and whatever else the task's rows hold, e.g. `question` for chat prompts or
the columns of your own data file), and returns one number per completion. It takes only the
fields it names, or all of them with `**kwargs`. A function that names a `rows` parameter is called
ptlab's way instead, `fn(completions, rows)` with one dict per row.

A reference is `path/to/file.py:function` (the file is imported by its path; its folder joins
sys.path, after the libraries, so its own imports of neighbouring files work) or `package.module:function` /
`package.module.function` (imported as a module: a file in a `--config-dir` folder or on
PYTHONPATH). The same function can sit in a config as `_target_: my_reward.correct` (no
`_partial_` needed, extra keys are passed to it as keyword arguments), alone or as a term of
`ptlab.rewards.weighted.WeightedSum`.

Departure from TRL: TRL also passes `completion_ids` and `trainer_state`; ptlab passes the text only.
A conversational TRL dataset gives completions as message lists; ptlab's completions are strings.
"""
import importlib
import importlib.util
import inspect
import sys
from pathlib import Path

from ptlab.errors import ConfigError


def load_function(reference: str, key: str = "reward"):
    """The function `reference` names; ConfigError (one line, naming `key`) if it cannot be loaded."""
    text = str(reference)
    where, sep, name = text.rpartition(":")
    if not sep:  # package.module.function
        where, _, name = text.rpartition(".")
    if not where or not name:
        raise ConfigError(f"{key}={text!r} is not allowed: name a function as path/to/file.py:function or module.function")
    try:
        if where.endswith(".py") or "/" in where:
            path = Path(where).expanduser().resolve()
            if not path.is_file():
                raise ConfigError(f"{key}={text!r} is not allowed: {path} is not a file")
            module = import_file(path)
        else:
            module = importlib.import_module(where)
    except ConfigError:
        raise
    except (Exception, SystemExit) as error:  # noqa: BLE001 - the user's module failed to import: one line
        raise ConfigError(f"{key}={text!r} cannot be imported: {type(error).__name__}: "
                          f"{(str(error).strip().splitlines() or [''])[0]}") from None
    function = getattr(module, name, None)
    if function is None:
        names = sorted(n for n, v in vars(module).items() if inspect.isfunction(v) and not n.startswith("_"))
        raise ConfigError(f"{key}={text!r} is not allowed: {where} has no {name!r}"
                          + (f" (its functions: {', '.join(names)})" if names else ""))
    if not callable(function):
        raise ConfigError(f"{key}={text!r} is not allowed: {name} is a {type(function).__name__}, not a function")
    return function


def import_file(path: Path):
    """Import a Python file by its path, once per process (its folder joins sys.path, last: a file
    beside it named like a library does not shadow the library)."""
    name = f"ptlab_user_{path.stem}_{abs(hash(str(path))):x}"
    if name in sys.modules:
        return sys.modules[name]
    if str(path.parent) not in sys.path:
        sys.path.append(str(path.parent))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return module


class Plain:
    """A plain function as a ptlab reward: `reward(completions, rows) -> list[float]`."""

    def __init__(self, fn, **kwargs):
        self.reference = fn if isinstance(fn, str) else f"{fn.__module__}.{fn.__qualname__}"
        self.fn = load_function(fn) if isinstance(fn, str) else fn
        self.kwargs = kwargs
        self.__qualname__ = getattr(self.fn, "__qualname__", type(self.fn).__qualname__)  # what errors name
        parameters = inspect.signature(self.fn).parameters
        self.ptlab_style = "rows" in parameters
        self.takes_all = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
        self.names = [name for name, p in parameters.items()
                      if p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]
        self.required = [name for name, p in parameters.items() if p.default is inspect.Parameter.empty and
                         p.kind in (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)]

    def check(self, row: dict) -> None:
        """Before any training: every argument the function requires is a field the rows have."""
        if self.ptlab_style:
            return
        available = {"completions", "prompts", *row, *self.kwargs} - {"prompt"}
        missing = [name for name in self.required if name not in available]
        if missing:
            raise ConfigError(f"reward {self.reference} needs {', '.join(map(repr, missing))}, which the task's rows do not "
                              f"have; it is given completions, prompts and the rows' fields: {', '.join(sorted(available - {'completions'}))}")

    def __call__(self, completions: list[str], rows: list[dict]) -> list:
        if self.ptlab_style:
            return self.fn(completions, rows, **self.kwargs)
        fields = {"prompts": [row.get("prompt") for row in rows]}
        for name in dict.fromkeys(key for row in rows for key in row):
            if name != "prompt":
                fields[name] = [row.get(name) for row in rows]
        given = {"completions": completions, **fields, **self.kwargs}
        if not self.takes_all:
            given = {name: value for name, value in given.items() if name in self.names}
        return self.fn(**given)


def adapt(node):
    """A resolved reward config (dicts and lists) with every `_target_` that names a plain function
    (not a class) turned into a Plain reward of it (extra keys become its keyword arguments), at any
    depth (WeightedSum terms): Hydra would otherwise call the function with no arguments."""
    if isinstance(node, list):
        return [adapt(item) for item in node]
    if not isinstance(node, dict):
        return node
    target = node.get("_target_")
    if isinstance(target, str) and not node.get("_partial_", False) and is_plain_function(target):
        return {"_target_": "ptlab.rewards.plain.Plain", "fn": target, **{k: v for k, v in node.items() if k != "_target_"}}
    return {key: adapt(value) for key, value in node.items()}


def is_plain_function(target: str) -> bool:
    from hydra._internal.utils import _locate

    try:
        located = _locate(target)
    except Exception:  # noqa: BLE001 - an unimportable target is Hydra's to report
        return False
    return inspect.isfunction(located)
