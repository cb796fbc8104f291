"""The second check: imports and targets. Every `_target_` the run will build imports (a group option
of your own, a typo'd class), your reward function loads, the optional packages a setting needs are
installed (vLLM, a packaged GGUF model), and the classes chosen for the algorithm, sampler and task
fit together by what they declare. Classes are imported, nothing is built."""
import importlib.util
import os
from pathlib import Path

from hydra.utils import get_class
from omegaconf import DictConfig, OmegaConf

from ptlab.errors import ConfigError
from ptlab.paths import USER_PATH


def check(cfg, choices: dict, defaults=None) -> None:
    """Raise ConfigError, naming the key, for the first target or import that fails."""
    check_group_targets(cfg)
    if defaults is not None:
        check_targets(cfg, defaults)
    if cfg.get("reward"):
        from ptlab.rewards.plain import load_function
        from ptlab.training.assemble import task_spec

        load_function(cfg.reward)  # a missing file or function, or one that fails to import: one line
        if not isinstance(cfg.task.get("reward"), DictConfig):
            task_spec(cfg)  # refuses a task whose reward is not a function (the exact task's table)
    if "package" in cfg.model:  # a model shipped inside a PyPI package: is it installed?
        from ptlab.models.gguf import locate

        locate(cfg.model.package, cfg.model.file, cfg.model.install)
    check_generation(cfg, choices)
    if cfg.sampler.get("dynamic_sampling") and not getattr(get_class(cfg.sampler._target_), "can_resample", False):
        raise ConfigError(f"algorithm={choices['algorithm']} cannot train on sampler={choices['sampler']}: "
                          "sampler.dynamic_sampling=true (DAPO's dynamic sampling, on in algorithm=dapo) needs a sampler "
                          "that draws fresh groups: on_policy, stale or reference; or set sampler.dynamic_sampling=false")
    if cfg.algorithm.get("supervision") == "process" and not getattr(get_class(cfg.task._target_), "step_rewards", False):
        raise ConfigError(f"algorithm.supervision=process needs a task with step rewards (task=chain_steps), "
                          f"got task={choices['task']}")


def check_group_targets(cfg) -> None:
    """The classes the run builds for its algorithm, sampler and task import: an option of your own
    (a YAML file in your --config-dir naming a module of yours) fails here in one line, before any
    warm start, where its module is not importable (a module in the --config-dir folder is)."""
    for group in ("algorithm", "sampler", "task"):
        target = (cfg.get(group) or {}).get("_target_")
        reason = import_error(target) if isinstance(target, str) else None
        if reason is not None:
            raise ConfigError(f"{group}._target_={target!r} cannot be imported: {reason}; a module of your own goes "
                              "in your --config-dir folder (importable) or on PYTHONPATH")


def import_error(target: str) -> str | None:
    """Why `target` (a dotted path) cannot be imported, in one line; None if it can."""
    from hydra._internal.utils import _locate  # hydra.utils.get_object, without its logged error lines

    try:
        _locate(target)
    except Exception as error:  # noqa: BLE001 - ImportError, AttributeError, ...
        return (str(error.__cause__ or error).strip().splitlines() or [""])[0] + hint(target)
    return None


# ptlab's top-level packages before they moved under ptlab. (a config of yours may still name them)
FORMER_PACKAGES = ("algorithms", "bench", "models", "parallel", "rewards", "schema", "storage", "sweeps", "tasks", "training")


def hint(target: str) -> str:
    """What to do about a target that does not import: name ptlab's class under ptlab., or rename a
    module of yours that a library of the same name is found before (your folders come last)."""
    first = target.split(".")[0]
    if first in FORMER_PACKAGES and not target.startswith("ptlab.") and import_error(f"ptlab.{target}") is None:
        return f" (ptlab's modules are under ptlab.: ptlab.{target})"
    spec = importlib.util.find_spec(first) if first.isidentifier() else None
    for folder in filter(None, os.environ.get(USER_PATH, "").split(os.pathsep)):
        mine = Path(folder) / f"{first}.py"
        if mine.exists() and spec is not None and spec.origin != str(mine):
            return (f" (your {mine} is not the module imported: {first} is found first at {spec.origin}, ahead of your "
                    "folders; rename your module)")
    return ""


def check_targets(cfg, defaults) -> None:
    """Every `_target_` the command line changed names an importable class or function (a typo fails
    here, not after the warm start); the experiment's own are imported when the job builds them."""
    def walk(node, shipped, path: str):
        if isinstance(node, dict):
            shipped = shipped if isinstance(shipped, dict) else {}
            target = node.get("_target_")
            if isinstance(target, str) and target != shipped.get("_target_") and import_error(target) is not None:
                raise ConfigError(f"{path}_target_={target!r} cannot be imported: {import_error(target)}")
            for key, value in node.items():
                walk(value, shipped.get(key), f"{path}{key}.")
        elif isinstance(node, list):
            for i, value in enumerate(node):
                walk(value, shipped[i] if isinstance(shipped, list) and i < len(shipped) else None, path)

    walk(OmegaConf.to_container(cfg, resolve=False) | {"hydra": None},
         OmegaConf.to_container(defaults, resolve=False) | {"hydra": None}, "")


def check_generation(cfg, choices: dict) -> None:
    """generation=vllm: vLLM installed (unless a test's fake engine), a plain policy, a sampler that
    generates from the policy."""
    if not cfg.generation._target_.endswith("VLLMGenerator"):
        return
    import importlib.util

    from ptlab.models.vllm import ENGINE
    from ptlab.training.samplers import OnPolicy, Reference, Stale

    if cfg.generation.get("engine", ENGINE) == ENGINE and importlib.util.find_spec("vllm") is None:
        raise ConfigError("generation=vllm needs vLLM, which is not installed: pip install vllm (a CUDA machine); "
                          "generation=hf samples without it")
    if (cfg.model.get("lora") or {}).get("r", 0):
        raise ConfigError(f"generation=vllm serves plain weights; model.lora.r={cfg.model.lora.r} is not supported "
                          "with it yet: use generation=hf, or model.lora.r=0")
    sampler = get_class(cfg.sampler._target_)
    if not issubclass(sampler, OnPolicy) or issubclass(sampler, (Reference, Stale)):
        raise ConfigError(f"generation=vllm samples from the policy; sampler={choices.get('sampler')} does not "
                          "(use sampler=on_policy or replay, or generation=hf)")

