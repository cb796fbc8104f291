"""Refuse bad input in one line (key, value given, what is allowed) before any work starts."""
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from algorithms.base import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"
SEARCH_PATH = (CONF_DIR, ROOT / "sweeps")  # conf/ and the sweeps/ package (hydra.searchpath)


def group_options(group: str) -> list[str]:
    return sorted(path.stem for root in SEARCH_PATH for path in (root / group).glob("*.yaml"))


def check_overrides(args: list[str]) -> None:
    """Check that every config-group value on the command line (sweeps included) exists."""
    overrides = OverridesParser.create().parse_overrides([arg for arg in args if "=" in arg and not arg.startswith("-")])
    for override in overrides:
        group = override.key_or_group
        if group.startswith("hydra") or not group_options(group) or override.is_delete():
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]
        for value in values:
            if value != "null" and value not in group_options(group):
                raise ConfigError(f"{group}={value!r} is not an option; choose one of: {', '.join(group_options(group))}")


def build(spec, **kwargs):
    """hydra.utils.instantiate, letting a ConfigError through as itself (one line, no wrapper)."""
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise


def check_config(cfg, choices: dict) -> object:
    """Validate a composed config; return the instantiated algorithm (its constructor checks beta and
    group_size). `choices` maps each config group to the option chosen. Costs no model build."""
    for key in ("seed", "lr", "beta", "group_size", "prompts_per_step"):
        if OmegaConf.is_missing(cfg, key):
            raise ConfigError(f"{key} is required")
    if cfg.group_size < 1 or cfg.prompts_per_step < 1:
        raise ConfigError(f"group_size={cfg.group_size}, prompts_per_step={cfg.prompts_per_step}: both must be >= 1")
    if cfg.lr <= 0:
        raise ConfigError(f"lr={cfg.lr} is not allowed: it must be > 0")
    if "path" in cfg.model:
        if OmegaConf.is_missing(cfg.model, "path"):
            raise ConfigError("model.path is required for this model: a local Hugging Face model directory")
        if not Path(str(cfg.model.path)).expanduser().is_dir():
            raise ConfigError(f"model.path={cfg.model.path!r} does not exist; it must be a local model directory")
    sampler = build(cfg.sampler, tokenizer=None, reward_fn=None)
    sources = get_class(cfg.algorithm._target_).sources
    if sampler.source not in sources:
        raise ConfigError(f"algorithm={choices['algorithm']} cannot train on sampler={choices['sampler']} "
                          f"({sampler.source} responses); it needs {' or '.join(sources)} responses")
    if sampler.needs_enumerable_task and not getattr(get_class(cfg.task._target_), "enumerable", False):
        raise ConfigError(f"sampler={choices['sampler']} needs an enumerable task (task=exact), got task={choices['task']}")
    if cfg.algorithm.get("supervision") == "process":
        if not getattr(get_class(cfg.task._target_), "step_rewards", False):
            raise ConfigError(f"algorithm.supervision=process needs a task with step rewards (task=chain_steps), "
                              f"got task={choices['task']}")
        if not sampler.provides_step_rewards:
            raise ConfigError(f"algorithm.supervision=process needs a sampler that generates, got sampler={choices['sampler']}")
    return build(cfg.algorithm)
