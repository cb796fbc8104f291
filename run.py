"""ptlab entry point: compose, validate, instantiate, fit, summarise.

    python run.py algorithm=gvpo beta=0.1
    python run.py -m algorithm=grpo,gvpo seed=0,1,2
"""
import logging
import os
import signal
import sys
import time
import traceback
import warnings
from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from hydra.errors import CompactHydraException
from hydra.types import RunMode
from omegaconf import DictConfig

import parallel
from schema import ConfigError, RunStopped, one_line
from tasks.base import fingerprint
from training.checks import build_task, check_config
from training.outputs import claim, holds
from training.prelaunch import check_command_line, import_user_folder
from training.summary import code_version, environment, headline, logged_config, write_config, write_failure, write_summary

os.environ.setdefault("WANDB_SILENT", "true")


def train(cfg: DictConfig) -> dict:
    """One run; returns its summary (also written to <output_dir>/summary.json)."""
    start = time.perf_counter()
    code_version()  # the commit of the code this run imported, read now (summary.json's environment)
    hydra_cfg = HydraConfig.get()
    choices = dict(hydra_cfg.runtime.choices)
    output_dir = Path(hydra_cfg.runtime.output_dir)
    checkpoints = cfg.callbacks.get("checkpoint")  # null: no periodic checkpoints (a signal still writes one)
    checkpoint_dir = Path(checkpoints.dirpath) if checkpoints else output_dir / "checkpoints"
    if parallel.rank() > 0:  # a data-parallel worker, started by Lightning re-running this command: rank 0 owns the files
        algorithm = check_config(cfg, choices)
        last = checkpoint_dir / "last.ckpt"
        return fit_and_summarise(cfg, choices, algorithm, output_dir, None, start, cfg.resume or (last if last.exists() else None))
    # the directory first: a run of another config there (a finished one with a typo'd value) is refused untouched
    lock, completed, unfinished = claim(output_dir, cfg, checkpoint_dir / "last.ckpt")  # this run's, or refused
    with lock:
        algorithm = check_config(cfg, choices)  # bad input fails here, in seconds
        from training.interrupts import Interrupted, StopOnSignal  # imports Lightning: after the checks

        if completed:
            print(f"already completed in {output_dir}: not run again", flush=True)
            return completed
        resume = cfg.resume or unfinished
        if resume:
            print(f"resuming from {resume}", flush=True)
        write_config(output_dir, cfg)  # first: exporting from a checkpoint of an unfinished run needs it
        with StopOnSignal(checkpoint_dir if cfg.trainer.enable_checkpointing else None) as stop:
            try:
                return fit_and_summarise(cfg, choices, algorithm, output_dir, stop, start, resume)
            except Interrupted as interrupted:
                write_summary(output_dir, cfg, choices, {"status": "interrupted", "error": str(interrupted),
                                                         "wall_seconds": time.perf_counter() - start})
                raise


def fit_and_summarise(cfg, choices, algorithm, output_dir: Path, stop, start: float, resume=None) -> dict:
    import lightning as L  # heavy imports after the checks

    from training.allocator import reuse_freed_memory
    from training.cores import warn_if_oversubscribed
    from training.heartbeat import HEARTBEAT, phase

    if cfg.reuse_memory:  # before the model and its tensors
        reuse_freed_memory()
    if parallel.rank() == 0:
        warn_if_oversubscribed()
        HEARTBEAT.start(float(os.environ.get("PTLAB_HEARTBEAT_SECONDS", 25)))  # without a terminal: a line at least
        #                                                                     every 30 s, whatever the phase

    logging.getLogger("lightning").handlers.clear()  # Lightning's info goes to run.log, not the console
    quiet_libraries()
    from lightning.pytorch.utilities.exceptions import SIGTERMException
    from models.export import export_policy
    from training.assemble import build_module, build_trainer
    from training.data import prompt_loader
    from training.interrupts import Interrupted

    hydra_cfg = HydraConfig.get()
    trainer = build_trainer(cfg, sweep_dir=hydra_cfg.sweep.dir if hydra_cfg.mode == RunMode.MULTIRUN else None,
                            extra_callbacks=[stop] if stop else [])
    with phase("building the task and the model"):
        task = build_task(cfg)
        module, warm = build_module(cfg, algorithm, task, model_name=f"model={choices.get('model')}")
    evaluating = lambda: getattr(getattr(module.evaluator, "evaluator", module.evaluator), "progress", None)
    for logger in trainer.loggers:  # after the model is built: a bad value fails before W&B starts
        logger.log_hyperparams(logged_config(cfg, choices))
    L.seed_everything(cfg.seed, workers=True)
    train_loader = prompt_loader(task.train_dataset(), cfg.prompts_per_step, shuffle=True, seed=cfg.seed)
    val_loader = prompt_loader(task.val_dataset(), len(task.val_dataset()), shuffle=False)
    module.prompt_order = train_loader.batch_sampler  # a resumed run goes on from the prompts it had reached
    try:
        clock = time.perf_counter()
        with phase("reference evaluation", progress=evaluating):
            before = trainer.validate(module, val_loader, verbose=False)[0]
        before.pop("step", None)  # the metrics rows' step index (module.validation_step), not a metric
        for logger in trainer.loggers:  # also under ref/ (as in summary.json), at step 0
            logger.log_metrics({f"ref/{key}": float(value) for key, value in before.items()}, step=0)
        seconds = {"ref_eval_seconds": time.perf_counter() - clock}
        try:
            with phase("training", progress=lambda: f"step {trainer.global_step}/{trainer.max_steps}"):
                trainer.fit(module, train_loader, val_loader, ckpt_path=resume, weights_only=True)
        except SIGTERMException as lightning_stop:  # Lightning's own SIGTERM stop (DDP): exit code 0 otherwise
            raise Interrupted(signal.SIGTERM) from lightning_stop
        step, after = module.last_validation
        if step != trainer.global_step:  # unless fit has just validated the final policy
            with phase("final evaluation", progress=evaluating):
                after = trainer.validate(module, val_loader, verbose=False)[0]
            after.pop("step", None)
        seconds["final_eval_seconds"] = module.validation_seconds
    finally:
        finish_wandb()
    if parallel.rank() > 0:
        return {}
    if len(set(module.rank_weights)) > 1:
        raise RunStopped(f"the {len(module.rank_weights)} processes ended with different weights (SHA-256 "
                         f"{', '.join(digest[:12] for digest in module.rank_weights)}): the run is not one run")
    with phase("export"):
        exported = export_policy(module.policy, module.tokenizer, output_dir / "policy", cfg.export)
    values = {
        "status": "completed",
        "steps": trainer.global_step,
        **after,  # val/reward, val/accuracy and, on the exact task, exact/*
        **{f"ref/{key}": value for key, value in before.items()},  # the same for the policy before training
        "ref_from_cache": getattr(module.evaluator, "hits", 0) > 0,  # read from <cache_dir>/evaluations, not recomputed
        **seconds,  # the evaluations before training (cached or not) and of the final policy
        **module.budget.metrics(),
        "wall_seconds": time.perf_counter() - start,
        "warmstart": str(warm) if warm else None,
        "task_data": fingerprint(task),  # what the task drew: whether a claim's seeds saw other data
        "policy": str(exported) if exported else None,
        "environment": environment(),
        "processes": trainer.world_size,
        "rank_weights_sha256": module.rank_weights,  # one per process, all equal
    }
    return write_summary(output_dir, cfg, choices, values)


def quiet_libraries() -> None:
    """No per-file progress bars from datasets (prompt rendering) and transformers (weight loading):
    the run's own progress bar is the one to watch; no Lightning warnings that do not apply to
    ptlab. Called in each job's process (a launcher's worker does not run this module's top)."""
    from datasets.utils.logging import disable_progress_bar as quiet_datasets
    from transformers.utils.logging import disable_progress_bar as quiet_transformers

    quiet_datasets()
    quiet_transformers()
    warnings.filterwarnings("ignore", message=".*(LeafSpec|does not have many workers|no `val_dataloader`|module\(s\) in "
                                              "eval mode|ModelCheckpoint with manual optimization).*")  # in every process
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft asks a deprecated name
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):  # its advert, on every Trainer
        logging.getLogger(name).addFilter(lambda record: "litlogger" not in str(record.msg))


def finish_wandb() -> None:
    """Close the W&B run so the next job of a multirun starts its own."""
    if "wandb" in sys.modules:
        import wandb

        wandb.finish()


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def main(cfg: DictConfig) -> float:
    """Returns the metric a sweeper optimises. A failed job leaves summary.json with its error line;
    in a multirun the other jobs still run (Hydra raises after the last). An interrupted job (SIGTERM,
    SIGINT) leaves `status: interrupted` and a checkpoint, and ends the process, sweep included, with
    exit code 128 + the signal's number."""
    from training.interrupts import Interrupted

    try:
        summary = train(cfg)
        if parallel.rank() > 0:  # a data-parallel worker: rank 0 reports
            return None
        print(headline(summary), flush=True)
        return summary["val/accuracy"]
    except Interrupted as interrupted:  # summary.json says so; the exit code too, and a sweep stops
        output_dir = Path(HydraConfig.get().runtime.output_dir)
        checkpoints = cfg.callbacks.get("checkpoint")
        last = (Path(checkpoints.dirpath) if checkpoints else output_dir / "checkpoints") / "last.ckpt"
        kept = "summary and checkpoint" if last.exists() else "summary (no checkpoint: stopped before a step ended)"
        print(f"error: {interrupted}; {kept} in {output_dir}", file=sys.stderr, flush=True)
        sys.exit(128 + interrupted.signum)
    except Exception as error:
        hydra_cfg = HydraConfig.get()
        if holds(hydra_cfg.runtime.output_dir) and parallel.rank() == 0:  # only into a directory this run claimed
            try:
                write_failure(hydra_cfg.runtime.output_dir, cfg, dict(hydra_cfg.runtime.choices), error)
            except OSError as unwritten:  # the disk that failed the run may fail this write too
                if not disk_full(unwritten):
                    raise
        expected = isinstance(error, (ConfigError, RunStopped)) or disk_full(error)
        if disk_full(error):
            where = f"writing {error.filename}" if error.filename else "writing the run's files"
            error = RunStopped(f"{error.strerror} {where}: the disk is full or a file-size "
                               f"limit (ulimit -f) was reached; files are written whole or not at all: free space and run the "
                               f"same command again")
        if hydra_cfg.mode == RunMode.MULTIRUN:  # the other jobs still run; Hydra then raises this job's error
            if not expected:
                traceback.print_exc()  # a bug: its traceback where it happened, among this job's lines
            print(f"error: {one_line(error)}", file=sys.stderr, flush=True)
            raise JobFailed(f"error: job {hydra_cfg.job.num} failed ({one_line(error)}); its summary.json is in "
                            f"{hydra_cfg.runtime.output_dir}; the sweep's other jobs ran") from None
        if not expected:
            raise
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(2 if isinstance(error, ConfigError) else 1)


def disk_full(error: BaseException) -> bool:
    """An OSError of a full disk, a quota or a file-size limit, anywhere in the run's writes."""
    import errno

    return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)


class JobFailed(CompactHydraException):
    """A sweep's failed job, as Hydra reports it after the sweep: one line, no traceback (Hydra prints
    a CompactHydraException's message only; the job's own lines came when it failed)."""


if __name__ == "__main__":
    import_user_folder(sys.argv[1:])  # a --config-dir folder's Python files are importable (a reward in it)
    try:
        check_command_line(sys.argv[1:])  # every job's config, before Hydra starts the first
    except ConfigError as error:
        print(f"error: {one_line(error)}", file=sys.stderr)
        sys.exit(2)
    main()
