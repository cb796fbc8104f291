"""Refuse bad input in one line (key, value given, what is allowed) before any work starts."""
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import DictConfig, OmegaConf

import schema
from models.options import check_export, check_model_config
from schema import ConfigError
from training.outputs import damaged

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
    try:
        if not repository.group_exists(group):
            return []
    except OSError:  # a key too long to be a file name: not a group
        return []
    return [name for name in repository.get_group_options(group, results_filter=ObjectType.CONFIG) if not name.startswith("_")]


def parse_overrides(args: list[str]) -> list:
    """Hydra's parse of the command line's overrides; an unparseable one is refused in one line."""
    from hydra.errors import OverrideParseException

    overrides = []
    for arg in command_line_overrides(args):
        try:
            overrides += OverridesParser.create().parse_overrides([arg])
        except ValueError as error:  # a number Python will not read (more than 4300 digits)
            raise ConfigError(f"{arg!r} is not a valid override ({error})") from None
        except OverrideParseException as error:
            lines = [line for line in str(error).splitlines() if line.strip() and not line.startswith(("Error parsing", "See "))]
            reason = lines[0] if lines else "Hydra cannot parse it"
            raise ConfigError(f"{arg!r} is not a valid override ({reason}); the form is key=value, e.g. lr=3e-4") from None
    return overrides


def command_line_overrides(args: list[str]) -> list[str]:
    """The key=value arguments, without flags and their values (`--config-dir DIR`)."""
    flags_with_values = ("--config-dir", "-cd", "--config-path", "-cp", "--config-name", "-cn", "--experimental-rerun")
    return [arg for i, arg in enumerate(args)  # key=value, +key=value, ~key (a deletion)
            if ("=" in arg or arg.startswith("~")) and not arg.startswith("-") and not (i and args[i - 1] in flags_with_values)]


def trainer_arguments() -> set[str]:
    """Lightning Trainer's arguments, as conf/trainer/default.yaml lists them (a test keeps the two equal)."""
    return set(OmegaConf.load(CONF_DIR / "trainer" / "default.yaml")) - {"_target_"}


def check_overrides(args: list[str]) -> None:
    """Check the command line before Hydra starts: every override parses, every config-group value
    (sweeps included) exists, and `+key=value` adds only a config group or a Trainer argument."""
    repository = config_repository(args)
    for override in parse_overrides(args):
        group = override.key_or_group
        if any(len(part) > 255 for part in group.replace("/", ".").split(".")):  # Hydra looks each up as a file name
            raise ConfigError(f"{group} is not a key of any config (a name of {max(map(len, group.split('.')))} characters)")
        options = group_options(group, repository)
        if group == "hydra/launcher":
            check_launcher(override.get_value_element_as_str())
        if group.startswith("hydra") or override.is_delete():
            continue
        if not options and (override.is_add() or override.is_force_add()):
            name = group.removeprefix("trainer.")
            if not (group.startswith("trainer.") and name in trainer_arguments()):
                raise ConfigError(f"+{group}: no config defines {group}; `+` adds a config group (e.g. +regime=replay) "
                                  "or a Lightning Trainer argument, and every ptlab key is set without it (key=value)")
        if not options:
            continue
        values = list(override.sweep_string_iterator()) if override.is_sweep_override() else [override.get_value_element_as_str()]
        for value in values:
            if value != "null" and value not in options:
                raise ConfigError(f"{group}={value!r} is not an option; choose one of: {', '.join(options)}")


# Hydra launcher options and the plugin each needs (ptlab's conf/hydra/launcher/slurm.yaml builds on submitit's)
LAUNCHER_PLUGINS = {"joblib": "hydra-joblib-launcher", "slurm": "hydra-submitit-launcher",
                    "submitit_slurm": "hydra-submitit-launcher", "submitit_local": "hydra-submitit-launcher"}


def check_launcher(name: str) -> None:
    import importlib.util

    package = LAUNCHER_PLUGINS.get(name)
    if package and importlib.util.find_spec(f"hydra_plugins.{package.replace('-', '_')}") is None:
        raise ConfigError(f"hydra/launcher={name} needs Hydra's {package} plugin, which is not installed: "
                          f"pip install {package} (or pip install -e \".[launchers]\")")


def build(spec, **kwargs):
    """hydra.utils.instantiate, letting a ConfigError through as itself (one line, no wrapper)."""
    try:
        return instantiate(spec, **kwargs)
    except InstantiationException as error:
        if isinstance(error.__cause__, ConfigError):
            raise error.__cause__ from None
        raise


def task_spec(cfg) -> dict:
    """The task's config, resolved, as it is instantiated: a top-level `reward=file.py:fn` replaces the
    task's reward, and a `_target_` naming a plain function becomes a reward of it (rewards/plain.py)."""
    from rewards.plain import adapt

    spec = OmegaConf.to_container(cfg.task, resolve=True)
    extra_terms = spec.pop("reward_terms", None)
    if cfg.get("reward"):
        if not isinstance(spec.get("reward"), dict):
            raise ConfigError(f"reward={cfg.reward!r} is not allowed with this task: it replaces a text task's reward "
                              f"function, and this task's reward is {spec.get('reward')!r}")
        spec["reward"] = {"_target_": "rewards.plain.Plain", "fn": cfg.reward}
    if extra_terms:  # task.reward_terms: terms added to the task's reward, which stays the first (correctness) term
        if not isinstance(spec.get("reward"), dict) or not isinstance(extra_terms, dict):
            raise ConfigError("task.reward_terms adds {name: {weight, fn}} terms to a text task's reward; got "
                              f"{extra_terms!r} for a task whose reward is {spec.get('reward')!r}")
        reward = spec["reward"]
        if reward.get("_target_") == "rewards.weighted.WeightedSum":
            reward["terms"] = {**reward["terms"], **extra_terms}
        else:
            spec["reward"] = {"_target_": "rewards.weighted.WeightedSum", "terms": {"correct": {"weight": 1.0, "fn": reward},
                                                                                  **extra_terms}}
    if isinstance(spec.get("reward"), dict):
        spec["reward"] = adapt(spec["reward"])
    return spec


def build_task(cfg):
    """The task (its rows drawn) with its reward; a plain-function reward is checked against the rows'
    fields here, before any model is built."""
    from rewards.plain import Plain

    task = build(task_spec(cfg))
    reward = getattr(task, "reward", None)
    terms = [term for _, term in getattr(reward, "terms", {}).values()] if hasattr(reward, "terms") else [reward]
    rows = task.train_dataset() if hasattr(task, "train_dataset") else None
    for term in terms:
        if isinstance(term, Plain) and rows is not None and len(rows):
            term.check(rows[0])
    return task


def check_config(cfg, choices: dict, defaults=None) -> object:
    """Validate a composed config; return the instantiated algorithm (its constructor checks beta and
    group_size). `choices` maps each config group to the option chosen; `defaults`, the config of
    the same choices without value overrides, gives every unlisted key its type. No model build."""
    schema.check(cfg, defaults)  # types, ranges, allowed values, required keys
    check_group_targets(cfg)
    if cfg.module.minibatches > cfg.prompts_per_step:
        raise ConfigError(f"module.minibatches={cfg.module.minibatches} is not allowed with prompts_per_step="
                          f"{cfg.prompts_per_step}: each minibatch holds whole groups, so at most {cfg.prompts_per_step}")
    if cfg.warmstart.steps > 0 and not {"batch_size", "lr", "seed", "cache_dir"} <= set(cfg.warmstart):
        raise ConfigError(f"warmstart.steps={cfg.warmstart.steps} needs warmstart=sft (this warm start has no "
                          "settings to train with); warmstart=none starts from the model as built")
    if cfg.get("reward"):
        from rewards.plain import load_function

        load_function(cfg.reward)  # a missing file or function, or one that fails to import: one line
        if not isinstance(cfg.task.get("reward"), DictConfig):
            task_spec(cfg)  # refuses a task whose reward is not a function (the exact task's table)
    if "reward" in cfg.task and cfg.task.reward is None:
        raise ConfigError("task.reward=null is not allowed: a task needs its reward function (a _target_ and its arguments)")
    settings, size = cfg.warmstart, cfg.task.get("train_size")
    if (settings.steps > 0 and settings.get("target_accuracy") is not None and isinstance(size, int)
            and size <= settings.get("calibration_rows", 0)):
        raise ConfigError(f"warmstart.calibration_rows={settings.calibration_rows} is not allowed with task.train_size="
                          f"{size}: the calibration rows are held out of the training rows, and would take all of them "
                          "(fewer calibration rows, more training rows, or warmstart.target_accuracy=null)")
    if cfg.get("resume") and not Path(cfg.resume).expanduser().is_file():
        raise ConfigError(f"resume={cfg.resume!r} is not a checkpoint file; e.g. <output_dir>/checkpoints/last.ckpt")
    if cfg.get("resume") and damaged(Path(cfg.resume).expanduser()):
        raise ConfigError(f"resume={cfg.resume!r} cannot be read ({damaged(Path(cfg.resume).expanduser())}); resume from "
                          "another checkpoint, or leave resume out to start over")
    if "path" in cfg.model:
        if not Path(str(cfg.model.path)).expanduser().is_dir():
            raise ConfigError(f"model.path={cfg.model.path!r} does not exist; it must be a local model directory")
    check_model_config(cfg.model, cfg.trainer.accelerator)
    check_export(cfg.export, (cfg.model.get("lora") or {}).get("r", 0))
    check_trainer(cfg)
    if defaults is not None:
        check_trainer_arguments(cfg, defaults)
    if defaults is not None:
        check_targets(cfg, defaults)
    check_optimizer(cfg, defaults)
    check_task_template(cfg)
    check_model_shape(cfg)
    check_generation(cfg, choices)
    if cfg.sampler.get("dynamic_sampling") and not getattr(get_class(cfg.sampler._target_), "can_resample", False):
        raise ConfigError(f"algorithm={choices['algorithm']} cannot train on sampler={choices['sampler']}: "
                          "sampler.dynamic_sampling=true (DAPO's dynamic sampling, on in algorithm=dapo) needs a sampler "
                          "that draws fresh groups: on_policy, stale or reference; or set sampler.dynamic_sampling=false")
    sampler = build(cfg.sampler, tokenizer=None, reward_fn=None)
    sources = get_class(cfg.algorithm._target_).sources
    if sampler.source not in sources:
        raise ConfigError(f"algorithm={choices['algorithm']} cannot train on sampler={choices['sampler']} "
                          f"({sampler.source} responses); it needs {' or '.join(sources)} responses")
    if cfg.algorithm.get("baseline") == "greedy" and not hasattr(sampler, "greedy_baseline"):
        raise ConfigError(f"algorithm={choices['algorithm']} cannot train on sampler={choices['sampler']}: its baseline is "
                          "the reward of a greedy response per prompt, which this sampler cannot decode; use on_policy, "
                          "stale, reference or replay")
    if sampler.needs_enumerable_task and not getattr(get_class(cfg.task._target_), "enumerable", False):
        raise ConfigError(f"sampler={choices['sampler']} needs an enumerable task (task=exact), got task={choices['task']}")
    if cfg.algorithm.get("supervision") == "process":
        if not getattr(get_class(cfg.task._target_), "step_rewards", False):
            raise ConfigError(f"algorithm.supervision=process needs a task with step rewards (task=chain_steps), "
                              f"got task={choices['task']}")
        if not sampler.provides_step_rewards:
            raise ConfigError(f"algorithm.supervision=process needs a sampler that generates, got sampler={choices['sampler']}")
    return build(cfg.algorithm)


def check_generation(cfg, choices: dict) -> None:
    """generation=vllm: vLLM installed (unless a test's fake engine), a plain policy, a sampler that
    generates from the policy."""
    if not cfg.generation._target_.endswith("VLLMGenerator"):
        return
    import importlib.util

    from models.vllm import ENGINE
    from training.samplers import OnPolicy, Reference, Stale

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


def check_trainer(cfg) -> None:
    """Trainer settings that ptlab handles itself under manual optimisation."""
    if cfg.trainer.get("gradient_clip_val") is not None:
        raise ConfigError(f"trainer.gradient_clip_val={cfg.trainer.gradient_clip_val} is not supported under manual "
                          "optimisation; ptlab clips gradients with module.max_grad_norm")
    if cfg.trainer.get("use_distributed_sampler"):
        raise ConfigError("trainer.use_distributed_sampler=true is not allowed: under data parallelism ptlab gives each "
                          "process its own prompts, whole groups (training/data.py); leave it false")
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    groups = cfg.prompts_per_step // cfg.module.minibatches
    if not isinstance(accumulate, int) or not 1 <= accumulate <= max(groups, 1):
        raise ConfigError(f"trainer.accumulate_grad_batches={accumulate!r} is not allowed: an integer from 1 to the "
                          f"prompts of one optimiser step ({groups} = prompts_per_step / module.minibatches), "
                          "each micro-batch holding whole groups")


def check_trainer_arguments(cfg, defaults) -> None:
    """Trainer arguments changed from the experiment's (trainer.precision, strategy, devices, ...) are
    given to a Trainer built here, before any job starts: Lightning checks its own arguments (and its
    import, about 2-3 s, is paid only when one was changed)."""
    mine, shipped = (OmegaConf.to_container(node.trainer, resolve=False) for node in (cfg, defaults))
    changed = {key for key in mine if key in shipped and mine[key] != shipped[key]}
    changed -= {"max_steps", "val_check_interval", "log_every_n_steps", "enable_progress_bar", "enable_model_summary",
                "accumulate_grad_batches", "default_root_dir", "num_sanity_val_steps", "max_epochs"}  # ptlab's own checks
    if not changed:
        return
    import logging

    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    arguments = {key: value for key, value in mine.items() if key != "default_root_dir" and not (
        isinstance(value, str) and "${" in value)}
    try:
        instantiate({**arguments, "_target_": cfg.trainer._target_}, logger=False, callbacks=[], enable_checkpointing=False,
                    accumulate_grad_batches=1)
    except Exception as error:  # noqa: BLE001 - whatever Lightning refuses: one line
        cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
        key = min(changed)
        raise ConfigError(f"trainer.{key}={mine[key]!r} is not allowed: "
                          f"{(str(cause).strip().splitlines() or [''])[0]}") from None


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
        return (str(error.__cause__ or error).strip().splitlines() or [""])[0]
    return None


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


def check_optimizer(cfg, defaults=None) -> None:
    """The optimizer is built on one parameter: a bad betas, eps or weight decay fails here, naming
    the first optimizer key changed from the experiment's."""
    import torch

    try:
        instantiate(cfg.optimizer)(params=[torch.nn.Parameter(torch.zeros(1))])
    except Exception as error:  # noqa: BLE001 - whatever the optimizer refuses: one line
        cause = error.__cause__ if isinstance(error, InstantiationException) and error.__cause__ else error
        mine = OmegaConf.to_container(cfg.optimizer, resolve=False)
        shipped = OmegaConf.to_container(defaults.optimizer, resolve=False) if defaults is not None else {}
        changed = [key for key in mine if key in shipped and mine[key] != shipped[key]]
        named = f"optimizer.{changed[0]}={mine[changed[0]]!r} is not allowed" if changed else "optimizer"
        raise ConfigError(f"{named}: {cfg.optimizer._target_} refuses it ({type(cause).__name__}: "
                          f"{(str(cause).strip().splitlines() or [''])[0]})") from None


def check_task_template(cfg) -> None:
    """A prompt template must name a field of the task's records: without one every prompt is the same text."""
    import string

    template = cfg.task.get("prompt_template")
    if template is None:
        return
    try:
        fields = [field for _, field, _, _ in string.Formatter().parse(str(template)) if field]
    except ValueError as error:
        raise ConfigError(f"task.prompt_template={template!r} is not allowed: {error}") from None
    if not fields:
        raise ConfigError(f"task.prompt_template={template!r} is not allowed: it names no field of the records "
                          "(e.g. {question} or {metadata[expression]}), so every prompt would be the same text")


def check_model_shape(cfg) -> None:
    """The tiny Llama's shape: attention heads must divide the hidden size, the context hold more
    than the generation budget (each prompt is checked against it once the tokenizer is built)."""
    if not str(cfg.model.get("_target_", "")).endswith("tiny_llama"):
        return
    hidden, heads = cfg.model.get("hidden_size"), cfg.model.get("num_heads")
    if isinstance(hidden, int) and isinstance(heads, int) and heads > 0 and hidden % heads:
        raise ConfigError(f"model.num_heads={heads} is not allowed: it must divide model.hidden_size={hidden}")
    context, budget = cfg.model.get("max_length"), cfg.generation.get("max_new_tokens")
    if isinstance(context, int) and isinstance(budget, int) and context <= budget:  # prompts checked once tokenized
        raise ConfigError(f"model.max_length={context} is not allowed: it is the model's context, which must hold a prompt "
                          f"and up to generation.max_new_tokens={budget} response tokens")
