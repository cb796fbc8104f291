"""Fitting a built run: the process set up for it, the evaluation of the policy before training,
Lightning's fit, and the evaluation of the final policy (run.py builds the parts, then calls `fit`)."""
import logging
import os
import signal
import sys
import time
import warnings

from ptlab import parallel
from ptlab.heartbeat import HEARTBEAT, phase


def prepare_process(cfg) -> None:
    """Before the model and its tensors: the allocator setting, the oversubscription warning and the
    heartbeat (rank 0), Lightning's info to run.log only, quiet libraries."""
    from ptlab.training.allocator import reuse_freed_memory
    from ptlab.training.cores import warn_if_oversubscribed

    if cfg.reuse_memory:  # before the model and its tensors
        reuse_freed_memory()
    import lightning  # noqa: F401 - its import adds the console handler cleared below
    if parallel.rank() == 0:
        warn_if_oversubscribed()
        HEARTBEAT.start(float(os.environ.get("PTLAB_HEARTBEAT_SECONDS", 25)))  # without a terminal: a line at least
        #                                                                     every 30 s, whatever the phase
    logging.getLogger("lightning").handlers.clear()  # Lightning's info goes to run.log, not the console
    quiet_libraries()


def fit(cfg, trainer, module, task, resume=None) -> tuple[dict, dict, dict]:
    """(metrics before training, metrics of the final policy, seconds of the two evaluations)."""
    import lightning as L
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from ptlab.training.data import prompt_loader
    from ptlab.training.interrupts import Interrupted

    evaluating = lambda: getattr(getattr(module.evaluator, "evaluator", module.evaluator), "progress", None)
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
    return before, after, seconds


def quiet_libraries() -> None:
    """No per-file progress bars from datasets (prompt rendering) and transformers (weight loading):
    the run's own progress bar is the one to watch; no Lightning warnings that do not apply to
    ptlab. Called in each job's process (a launcher's worker does not run run.py's top)."""
    from datasets.utils.logging import disable_progress_bar as quiet_datasets
    from transformers.utils.logging import disable_progress_bar as quiet_transformers

    quiet_datasets()
    quiet_transformers()
    warnings.filterwarnings("ignore", message=".*(LeafSpec|does not have many workers|no `val_dataloader`|module\\(s\\) in "
                                              "eval mode|ModelCheckpoint with manual optimization).*")  # in every process
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*")  # peft asks a deprecated name
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch"):  # its advert, on every Trainer
        logging.getLogger(name).addFilter(lambda record: "litlogger" not in str(record.msg))


def finish_wandb() -> None:
    """Close the W&B run so the next job of a multirun starts its own."""
    if "wandb" in sys.modules:
        import wandb

        wandb.finish()
