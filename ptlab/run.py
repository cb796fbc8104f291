"""ptlab's entry point, one page: compose (Hydra), check, build, fit, summarise.

    python run.py algorithm=gvpo beta=0.1
    python run.py -m algorithm=grpo,gvpo seed=0,1,2

`cli` checks the command line and every job it will launch before Hydra starts the first
(ptlab/checks/); `main`, Hydra's task function, runs one job: `train` claims the output directory,
checks the job's config, builds its parts (training/assemble.py), fits them (training/fit.py) and
writes summary.json (training/summary.py). How a job that fails ends: training/failures.py.
"""
import os
import sys
import time
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig

from ptlab import parallel
from ptlab.checks import check_command_line, check_config, check_task
from ptlab.errors import ConfigError, RunStopped, one_line
from ptlab.paths import CONF_DIR, import_user_folder
from ptlab.training.failures import exit_on_failure
from ptlab.training.outputs import checkpoint_dir, claim
from ptlab.training.summary import code_version, completed_values, headline, logged_config, write_config, write_summary

os.environ.setdefault("WANDB_SILENT", "true")


def train(cfg: DictConfig) -> dict:
    """One run; returns its summary (also written to <output_dir>/summary.json)."""
    start = time.perf_counter()
    code_version()  # the commit of the code this run imported, read now (summary.json's environment)
    hydra_cfg = HydraConfig.get()
    choices, output_dir = dict(hydra_cfg.runtime.choices), Path(hydra_cfg.runtime.output_dir)
    last = checkpoint_dir(cfg, output_dir) / "last.ckpt"
    if parallel.rank() > 0:  # a data-parallel worker, started by Lightning re-running this command: rank 0 owns the files
        resume = cfg.resume or (last if last.exists() else None)
        return build_fit_summarise(cfg, choices, check_config(cfg, choices), output_dir, None, start, resume)
    # the directory first: a run of another config there (a finished one with a typo'd value) is refused untouched
    lock, completed, unfinished = claim(output_dir, cfg, last)  # this run's, or refused
    with lock:
        algorithm = check_config(cfg, choices)  # bad input fails here, in seconds (the algorithm is built to check it)
        from ptlab.training.interrupts import Interrupted, StopOnSignal  # imports Lightning: after the checks

        if completed:
            print(f"already completed in {output_dir}: not run again", flush=True)
            return completed
        resume = cfg.resume or unfinished
        if resume:
            print(f"resuming from {resume}", flush=True)
        write_config(output_dir, cfg)  # first: exporting from a checkpoint of an unfinished run needs it
        with StopOnSignal(last.parent if cfg.trainer.enable_checkpointing else None) as stop:
            try:
                return build_fit_summarise(cfg, choices, algorithm, output_dir, stop, start, resume)
            except Interrupted as interrupted:
                write_summary(output_dir, cfg, choices, {"status": "interrupted", "error": str(interrupted),
                                                         "wall_seconds": time.perf_counter() - start})
                raise


def build_fit_summarise(cfg, choices: dict, algorithm, output_dir: Path, stop, start: float, resume=None) -> dict:
    from ptlab.heartbeat import phase  # heavy imports after the checks
    from ptlab.models.export import export_policy
    from ptlab.training.assemble import build_module, build_task, build_trainer
    from ptlab.training.fit import fit, prepare_process

    prepare_process(cfg)
    hydra_cfg = HydraConfig.get()
    trainer = build_trainer(cfg, sweep_dir=hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else None,
                            extra_callbacks=[stop] if stop else [])
    with phase("building the task and the model"):
        task = build_task(cfg)
        check_task(task)  # your reward's parameters against the rows, before any model is built
        module, warm = build_module(cfg, algorithm, task, model_name=f"model={choices.get('model')}")
    for logger in trainer.loggers:  # after the model is built: a bad value fails before W&B starts
        logger.log_hyperparams(logged_config(cfg, choices))
    measured = fit(cfg, trainer, module, task, resume)
    if parallel.rank() > 0:
        return {}
    if len(set(module.rank_weights)) > 1:
        raise RunStopped(f"the {len(module.rank_weights)} processes ended with different weights (SHA-256 "
                         f"{', '.join(digest[:12] for digest in module.rank_weights)}): the run is not one run")
    with phase("export"):
        exported = export_policy(module.policy, module.tokenizer, output_dir / "policy", cfg.export)
    return write_summary(output_dir, cfg, choices, completed_values(trainer, module, task, measured, warm, exported, start))


@hydra.main(version_base="1.3", config_path=str(CONF_DIR), config_name="config")
def main(cfg: DictConfig) -> float:
    """One job; returns the metric a sweeper optimises. A job that fails or is interrupted ends as
    training/failures.py says (its summary.json, its exit code; in a multirun the other jobs still run)."""
    with exit_on_failure(cfg):
        summary = train(cfg)
        if parallel.rank() > 0:  # a data-parallel worker: rank 0 reports
            return None
        print(headline(summary), flush=True)
        return summary["val/accuracy"]


def cli() -> None:
    """`python run.py <overrides>` (the repository's run.py calls this)."""
    import_user_folder(sys.argv[1:])  # a --config-dir folder's Python files are importable (a reward in it)
    try:
        check_command_line(sys.argv[1:])  # every job's config, before Hydra starts the first
    except ConfigError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    main()
