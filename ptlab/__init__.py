"""ptlab from Python: one job, as `python run.py <overrides>` runs it, its summary returned.

    import ptlab

    summary = ptlab.train(["algorithm=grpo", "trainer.max_steps=50", "logger=csv"])
    print(summary["val/accuracy"], summary["output_dir"])

    for beta in (0.05, 0.1, 0.2):  # a sweep is a loop
        ptlab.train(["algorithm=gvpo", f"beta={beta}", f"hydra.run.dir=runs/beta_{beta}"])

The overrides are the command line's: the same composition (Hydra's compose API on conf/, a
`config_dir` folder like --config-dir), the same checks before any work (a bad value raises
ptlab.errors.ConfigError naming the key), the same output directory (`hydra.run.dir`, by default
outputs/<date>/<time>) and files. A run that fails writes its summary.json with the error and
raises; a completed run in the same directory is not repeated, an unfinished one resumes. Sweeps
and launchers (-m, joblib, SLURM) are the CLI's.
"""
from pathlib import Path

from ptlab.paths import user_folders_last

__all__ = ["train"]

user_folders_last()  # before anything imports a library: a user's file cannot stand in for one

from ptlab.hardware import register_resolvers  # noqa: E402 - after the path is set

register_resolvers()  # ${native_precision:}: bf16-mixed where the machine has native bf16, else 32-true


def train(overrides: list[str] | tuple = (), config_dir: str | Path | None = None) -> dict:
    """Run one job and return its summary (also in <output_dir>/summary.json)."""
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf, open_dict

    from ptlab import run
    from ptlab.checks import check_command_line
    from ptlab.checks.jobs import hydra_as_run_py
    from ptlab.errors import ConfigError
    from ptlab.paths import import_user_folder
    from ptlab.training.outputs import holds
    from ptlab.training.summary import write_failure

    overrides = [str(item) for item in overrides]
    args = overrides + (["--config-dir", str(config_dir)] if config_dir else [])
    if any(arg in ("-m", "--multirun") or arg.startswith("-") for arg in overrides):
        raise ConfigError(f"ptlab.train takes overrides only ({next(a for a in overrides if a.startswith('-'))!r} given): "
                          "a sweep is a loop over ptlab.train, or the command line's -m")
    import_user_folder(args)
    check_command_line(args)  # every value, before any work: ConfigError naming the key
    with hydra_as_run_py(str(config_dir) if config_dir else None):
        cfg = compose("config", overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(Path(OmegaConf.select(cfg, "hydra.run.dir")).absolute())
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    try:
        return run.train(cfg)
    except Exception as error:
        if holds(cfg.hydra.runtime.output_dir):  # only into a directory this run claimed
            write_failure(cfg.hydra.runtime.output_dir, cfg, dict(cfg.hydra.runtime.choices), error)
        raise
