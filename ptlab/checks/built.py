"""The third check: what needs a built object. The Trainer (when its arguments changed), the optimizer
(on one parameter), the sampler (without a tokenizer) and the algorithm are built from the config's
values, their own constructors refusing what they cannot take (Lightning's arguments, betas, the
algorithm's beta and group size, a policy loss's settings), and the sampler says what it gives. All
are thrown away but the algorithm, a weight rule without tensors, which check_config returns for the
run. `check_task` runs on the run's own task once it is built: your plain reward's parameters against
its rows. None of the run's parts that hold data or weights (task, model, module) is built here."""
from hydra.errors import InstantiationException
from hydra.utils import get_class, instantiate
from omegaconf import OmegaConf

from ptlab.errors import ConfigError


def check(cfg, choices: dict, defaults=None):
    """Raise ConfigError, naming the key, for the first value a built object refuses; return the algorithm
    built to check it (a weight rule without tensors, which the run then uses)."""
    from ptlab.training.assemble import build, build_algorithm  # the building home; models import here, not before

    if defaults is not None:
        check_trainer_arguments(cfg, defaults)
    check_optimizer(cfg, defaults)
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
    if cfg.algorithm.get("supervision") == "process" and not sampler.provides_step_rewards:
        raise ConfigError(f"algorithm.supervision=process needs a sampler that generates, got sampler={choices['sampler']}")
    return build_algorithm(cfg)  # its constructor checks beta, group_size, the policy loss and its settings


def check_task(task) -> None:
    """A plain-function reward (rewards/plain.py) takes the fields the task's rows hold."""
    from ptlab.rewards.plain import Plain

    reward = getattr(task, "reward", None)
    terms = [term for _, term in getattr(reward, "terms", {}).values()] if hasattr(reward, "terms") else [reward]
    rows = task.train_dataset() if hasattr(task, "train_dataset") else None
    for term in terms:
        if isinstance(term, Plain) and rows is not None and len(rows):
            term.check(rows[0])


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

