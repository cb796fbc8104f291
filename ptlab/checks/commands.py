"""The command line, checked before Hydra starts: every override parses, every config-group value
(sweeps included) exists, `+key=value` adds only a config group or a Trainer argument, the launcher's
plugin is installed. Hydra's view of the config groups (conf/, the shipped sweeps, a --config-dir)."""
from pathlib import Path

from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

from ptlab.errors import ConfigError
from ptlab.paths import CONF_DIR


def config_repository(args: list[str]):
    """Hydra's view of every config group: conf/, the sweeps package (config.yaml's searchpath), a
    user's --config-dir and any hydra.searchpath=[...] given on the command line."""
    from hydra._internal.config_repository import ConfigRepository
    from hydra._internal.utils import create_config_search_path

    search_path = create_config_search_path(str(CONF_DIR))
    search_path.append("ptlab", "pkg://ptlab.sweeps")
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

