"""Refuse bad input in one line (key, value given, what is allowed) before any work starts."""
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from models.options import check_export, check_model_config
from schema import ConfigError

ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = ROOT / "conf"


def config_repository(args: list[str]):
    """Hydra's view of every config group: conf/, the sweeps package (config.yaml's searchpath), a
    user's --config-dir and any hydra.searchpath=[...] given on the command line."""
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.utils import create_config_search_path

    search_path = create_config_search_path(str(CONF_DIR))
    search_path.append("ptlab", "pkg://sweeps")
    for i, arg in enumerate(args):
        if arg in ("--config-dir", "-cd") and i + 1 < len(args):
            search_path.append("command-line", f"file://{Path(args[i + 1]).resolve()}")
        elif arg.startswith(("--config-dir=", "-cd=")):
            search_path.append("command-line", f"file://{Path(arg.split('=', 1)[1]).resolve()}")
    for override in OverridesParser.create().parse_overrides([a for a in args if a.startswith("hydra.searchpath=")]):
        for entry in override.value():
            search_path.append("command-line", entry if "://" in entry else f"file://{Path(entry).resolve()}")
    return ConfigRepository(search_path)


def group_options(group: str, repository=None) -> list[str]:
    """The options of a config group; files starting with _ are parts of other configs, not options."""
    from hydra.core.object_type import ObjectType

    repository = repository or config_repository([])
    if not repository.group_exists(group):
        return []
    return [name for name in repository.get_group_options(group, results_filter=ObjectType.CONFIG) if not name.startswith("_")]


def check_overrides(args: list[str]) -> None:
    """Check that every config-group value on the command line (sweeps included) exists."""
    repository = config_repository(args)
    overrides = OverridesParser.create().parse_overrides([arg for arg in args if "=" in arg and not arg.startswith("-")])
    for override in overrides:
        group = override.key_or_group
        options = group_options(group, repository)
        if group.startswith("hydra") or not options or override.is_delete():
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]
        for value in values:
            if value != "null" and value not in options:
                raise ConfigError(f"{group}={value!r} is not an option; choose one of: {', '.join(options)}")


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
    check_model_config(cfg.model, cfg.trainer.accelerator)
    check_export(cfg.export, (cfg.model.get("lora") or {}).get("r", 0))
    check_trainer(cfg)
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


def check_trainer(cfg) -> None:
    """Trainer settings that ptlab handles itself under manual optimisation."""
    if cfg.trainer.get("gradient_clip_val") is not None:
        raise ConfigError(f"trainer.gradient_clip_val={cfg.trainer.gradient_clip_val} is not supported under manual "
                          "optimisation; ptlab clips gradients with module.max_grad_norm")
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    groups = cfg.prompts_per_step // cfg.module.minibatches
    if not isinstance(accumulate, int) or not 1 <= accumulate <= max(groups, 1):
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate!r} is not allowed: an integer from 1 to the "
                          f"prompts of one optimiser step ({groups} = prompts_per_step / module.minibatches), "
                          "each micro-batch holding whole groups")
