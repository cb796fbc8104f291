"""Callbacks: sample tables of prompts, completions and rewards."""
import json
import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.loggers import WandbLogger

from ptlab.storage import write_atomically


class SampleTable(L.Callback):
    """Every `every_n_steps` rollouts, log `num_samples` (prompt, completion, reward) rows as a W&B
    table (key samples/train) and append them to samples.jsonl in `output_dir`; rank 0's rollout
    under data parallelism."""

    def __init__(self, every_n_steps: int = 50, num_samples: int = 16, output_dir: str | None = None):
        self.every_n_steps, self.num_samples = every_n_steps, num_samples
        self.path = Path(output_dir) / "samples.jsonl" if output_dir else None

    def on_train_start(self, trainer, pl_module) -> None:
        """A resumed run drops the rows after its checkpoint's step: it writes them again."""
        if trainer.is_global_zero and self.path and self.path.exists():
            kept = [line for line in self.path.read_text().splitlines() if json.loads(line)["step"] <= trainer.global_step]
            write_atomically(self.path, "".join(line + "\n" for line in kept))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        rollout = pl_module.last_rollout
        if not trainer.is_global_zero or rollout is None or batch_idx % self.every_n_steps or not rollout.completions:
            return
        count = min(self.num_samples, len(rollout.completions))
        rows = [[rollout.prompts[i], rollout.completions[i], float(rollout.rewards[i])] for i in range(count)]
        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_table(key="samples/train", columns=["prompt", "completion", "reward"], data=rows,
                                 step=trainer.global_step)
        if self.path:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a") as f:
                for prompt, completion, reward in rows:
                    f.write(json.dumps({"step": trainer.global_step, "prompt": prompt, "completion": completion,
                                        "reward": reward}) + "\n")


class ProgressLine(L.Callback):
    """Without a terminal (batch jobs, CI, nohup, a file) Lightning's progress bar draws nothing:
    print one plain line every `every_n_steps` optimiser steps instead, with step, reward, KL to the
    reference (kl_ref_k1: the k1 estimate, mean log-ratio on the sampled responses, which can be
    negative on a finite sample), the last validation accuracy, elapsed time and time left."""

    KEYS = (("train/reward", "reward"), ("train/kl_ref", "kl_ref_k1"), ("val/accuracy", "val/accuracy"),
            ("exact/kl_to_optimum", "kl_to_optimum"))

    def __init__(self, every_n_steps: int = 10, when: str = "no_terminal"):
        self.every_n_steps, self.when = every_n_steps, when  # when: no_terminal | always | never

    def enabled(self) -> bool:
        return self.when == "always" or (self.when == "no_terminal" and not sys.stdout.isatty())

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step, total = trainer.global_step, trainer.max_steps
        if not trainer.is_global_zero or not self.enabled() or (step % self.every_n_steps and step != total):
            return
        metrics = trainer.callback_metrics
        values = " ".join(f"{name} {float(metrics[key]):.4g}" for key, name in self.KEYS if key in metrics)
        elapsed = pl_module.budget.wall_seconds
        left = elapsed / max(step, 1) * (total - step) if total > 0 else float("nan")
        print(f"step {step}/{total} {values} elapsed {elapsed:.0f}s eta {left:.0f}s", flush=True)


def step_bar(name: str = "training"):
    """Lightning's rich progress bar, labelled with the phase and not "Epoch 0/-2" (ptlab counts
    optimiser steps, with no epoch limit), without the logger's version number (`v_num`)."""
    from lightning.pytorch.callbacks import RichProgressBar

    class StepBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            return f"{name:{len(self.validation_description)}}"

        def get_metrics(self, trainer, pl_module):
            items = super().get_metrics(trainer, pl_module)
            items.pop("v_num", None)
            return items

    return StepBar()
