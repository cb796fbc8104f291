"""Every job a command line will launch, composed as Hydra will compose it and checked (check_config)
with the directories it will write, before the first job starts: a bad value in the last job of a
sweep fails in seconds, before the first job trains."""
import os
from contextlib import contextmanager
from pathlib import Path

from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from ptlab.checks.config import check_config
from ptlab.checks.commands import check_overrides, command_line_overrides, parse_overrides
from ptlab.errors import ConfigError
from ptlab.paths import CONF_DIR, user_config_dir


# Flags after which Hydra prints or changes what it composes instead of running: not checked here.
# (--config-dir is: the user's folder joins the search path as Hydra adds it.)
NOT_CHECKED = ("--help", "-h", "--hydra-help", "--info", "-i", "--cfg", "-c", "--resolve", "--shell-completion",
               "-sc", "--config-path", "-cp", "--config-name", "-cn", "--experimental-rerun")


BASIC_SWEEPER = "hydra._internal.core_plugins.basic_sweeper.BasicSweeper"


def check_command_line(args: list[str]) -> None:
    """Raise ConfigError, naming the key, for the first bad value of any job `args` would launch."""
    check_overrides(args)
    if any(arg.split("=", 1)[0] in NOT_CHECKED for arg in args):
        return  # a user config folder or a printing flag: each job's own check_config still runs
    multirun = "-m" in args or "--multirun" in args
    with hydra_as_run_py(user_config_dir(args)):
        defaults, planned = {}, jobs(command_line_overrides(args), multirun)
        if len(planned) > 20:  # about 0.1 s each
            print(f"checking the configs of {len(planned)} jobs before launching the first", flush=True)
        for job in planned:
            check_job(job, multirun, defaults)


@contextmanager
def hydra_as_run_py(config_dir: str | None):
    """Hydra's global state as run.py's `@hydra.main` sets it up: conf/ as the primary config
    directory and a user's --config-dir ahead of it in the search path (where Hydra puts it)."""
    from hydra._internal.hydra import Hydra
    from hydra._internal.utils import create_config_search_path
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.config_search_path import SearchPathQuery

    if config_dir is None:
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3", job_name="run"):
            yield
        return
    search_path = create_config_search_path(str(CONF_DIR))
    search_path.prepend(provider="command-line", path=f"file://{Path(config_dir).resolve()}",
                        anchor=SearchPathQuery(provider="schema"))
    GlobalHydra.instance().clear()
    Hydra.create_main_hydra2(task_name="run", config_search_path=search_path)
    try:
        yield
    finally:
        GlobalHydra.instance().clear()


def jobs(overrides: list[str], multirun: bool) -> list[list[str]]:
    """The override list of each job, as Hydra's basic sweeper will expand the command line and the
    experiment's `hydra.sweeper.params` (other sweepers choose values as they go: their fixed part only)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = parse_overrides(overrides)
    swept = [override.input_line for override in parsed if override.is_sweep_override()]
    if swept and not multirun:
        raise ConfigError(f"{swept[0]} is a sweep; run it with -m (python run.py -m {' '.join(overrides)})")
    fixed = [override.input_line for override in parsed if not override.is_sweep_override()]
    if not multirun:
        return [fixed]
    hydra_cfg = composed(fixed).hydra
    if hydra_cfg.sweeper._target_ != BASIC_SWEEPER:
        return [fixed]
    params = [f"{key}={value}" for key, value in (hydra_cfg.sweeper.get("params") or {}).items()]
    batches = BasicSweeper.split_arguments(parse_overrides(params + overrides), max_batch_size=None)
    return [list(job) for batch in batches for job in batch]


def composed(overrides: list[str], hydra_node: bool = True):
    """The config Hydra composes from these overrides; one that cannot merge is refused in one line."""
    from hydra.errors import ConfigCompositionException

    try:
        return compose("config", overrides=overrides, return_hydra_config=hydra_node)
    except ConfigCompositionException as error:
        what = (str(error).splitlines() or [""])[0].removeprefix("Error merging override ")
        reason = " ".join(str(error.__cause__ or "").split()).split(" full_key:")[0]
        raise ConfigError(f"{what} is not allowed" + (f": {reason}" if reason else "")) from None


def check_job(overrides: list[str], multirun: bool, defaults: dict) -> None:
    """Compose one job's config and check it: schema, cross-key rules, writable directories."""
    cfg = composed(overrides)
    choices = dict(cfg.hydra.runtime.choices)
    group_overrides = tuple(o.input_line for o in parse_overrides(overrides) if o.key_or_group in choices)
    if group_overrides not in defaults:
        defaults[group_overrides] = composed(list(group_overrides), hydra_node=False)
    check_config(cfg, choices, defaults[group_overrides])
    if multirun and processes_per_job(cfg.trainer) > 1 and "submitit" not in cfg.hydra.launcher._target_:
        raise ConfigError(f"trainer.devices={cfg.trainer.devices} (trainer.num_nodes={cfg.trainer.num_nodes}) in a sweep: "
                          "Lightning starts a job's other processes once per Python process, so only the first job "
                          "of a local sweep could run; run the jobs one at a time (a shell loop over python run.py), "
                          "or each as its own SLURM job (hydra/launcher=slurm)")
    check_writable("hydra.sweep.dir" if multirun else "hydra.run.dir",
                   cfg.hydra.sweep.dir if multirun else cfg.hydra.run.dir)
    check_writable("cache_dir", OmegaConf.select(cfg, "cache_dir"))
    checkpoints = cfg.get("callbacks", {}).get("checkpoint")
    if checkpoints and not OmegaConf.is_interpolation(checkpoints, "dirpath"):  # the default lives in the run directory
        check_writable("callbacks.checkpoint.dirpath", checkpoints.dirpath)


def processes_per_job(trainer) -> int:
    """The processes one job's Trainer starts (its devices x nodes; "auto" counts as 1)."""
    devices = trainer.devices
    count = len(devices) if not isinstance(devices, (int, str)) else devices if isinstance(devices, int) else 1
    return count * (trainer.num_nodes if isinstance(trainer.num_nodes, int) else 1)


def check_writable(key: str, path) -> None:
    """A directory that exists and is writable, or can be created under one that is."""
    existing = Path(str(path)).expanduser().absolute()
    try:
        while not existing.exists():
            existing = existing.parent
    except OSError as error:  # a name longer than the file system allows
        raise ConfigError(f"{key}={str(path)!r} is not allowed: {error.strerror}") from None
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{key}={str(path)!r} is not allowed: it must be a writable directory, and {existing} "
                          f"is {'not a directory' if not existing.is_dir() else 'not writable'}")

